"""The prefix cache: the KV of earlier sequences, kept in blocks, reused by later prompts.

A sequence's tokens are cut into blocks of ``block_tokens``; block *j* is named by a hash of
every token up to its end (a chain: each name covers the block's tokens and its parent's name),
so one dictionary lookup per block finds the longest cached prefix of a prompt. Admission costs
one hash and one lookup per block of the prompt, whatever the cache holds: nothing walks the
cached sequences and nothing is copied for a prefix shorter than one block (the few tokens a
chat template puts in front of every prompt never match). Sequences that share a prefix share
its blocks.

Blocks live in memory, least recently used evicted first (a chain's root is touched last, so
it outlives its leaves), bounded in bytes. With a disk tier, every new block is also written as
a safetensors file under a folder named by the model's identity (its path and the size and
modification time of every file of the checkpoint), between decode steps while the worker is
idle; a prompt whose blocks left memory (evicted, another model swapped in, a restart) reads
them back. The disk tier is bounded in bytes too; its oldest files go first.

Only models whose every layer keeps a plain ``KVCache`` (full attention) are cached in blocks;
the batch scheduler keeps mlx-lm's ``LRUPromptCache`` for the others (sliding windows, state
space layers).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, cast

import mlx.core as mx
from mlx_lm.models.cache import KVCache

__all__ = ["DiskTier", "PrefixCache", "block_digests", "blockable", "model_identity"]

logger = logging.getLogger(__name__)

FORMAT = "mlx-router-kv-2"
"""Changes whenever the way blocks are named or stored changes; part of every name."""
ROOT = FORMAT.encode()
"""The parent of every sequence's first block."""
SIBLINGS_SCANNED = 32
"""Most recent blocks after a matched prefix compared token by token for a partial last block."""


def blockable(cache: Sequence[Any]) -> bool:
    """Whether a model's prompt cache can be cut into blocks (every layer a plain KVCache)."""
    return bool(cache) and all(type(c) is KVCache for c in cache)


def block_digests(tokens: Sequence[int], block_tokens: int, count: int) -> list[bytes]:
    """Names of the first ``count`` blocks of ``tokens``: each hashes its tokens and its parent's name."""
    digests: list[bytes] = []
    parent = ROOT
    for j in range(count):
        h = hashlib.blake2b(parent, digest_size=16)
        h.update(array("q", tokens[j * block_tokens : (j + 1) * block_tokens]).tobytes())
        parent = h.digest()
        digests.append(parent)
    return digests


@dataclass(slots=True)
class _Block:
    """The KV of ``block_tokens`` tokens for every layer: keys and values each one array of the
    layers stacked, ``(layers, batch 1, heads, tokens, head dim)``. One array per block, not one
    per layer, so that assembling a prefix copies one piece per block: a 16k-token prefix of a
    16-layer model was 8,224 copies (a kernel launch each, ~70 ms on an H200), now 514."""

    keys: mx.array
    values: mx.array
    nbytes: int
    parent: bytes = ROOT
    """The name of the block before it (set when it enters memory)."""
    tokens: tuple[int, ...] = ()

    @classmethod
    def of(cls, keys: mx.array, values: mx.array) -> _Block:
        return cls(keys, values, keys.nbytes + values.nbytes)


def model_identity(model_path: str, block_tokens: int) -> str:
    """A name for the KV a checkpoint produces: changes when any of its files or the block size does."""
    root = Path(model_path).resolve()
    files = sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else [root]
    described = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    text = json.dumps({"format": FORMAT, "path": str(root), "files": described, "block": block_tokens})
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class DiskTier:
    """Blocks as safetensors files in one folder per model identity, bounded in bytes."""

    def __init__(self, directory: str, model_path: str, block_tokens: int, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.block_tokens = block_tokens
        root = Path(directory).expanduser()
        identity = model_identity(model_path, block_tokens)
        self.folder = root / identity
        self.folder.mkdir(parents=True, exist_ok=True)
        owner = str(Path(model_path).resolve())
        _forget_stale(root, owner, identity)
        (self.folder / "model.json").write_text(json.dumps({"path": owner, "identity": identity}))
        self._files: OrderedDict[bytes, int] = OrderedDict()
        """Blocks on disk, oldest first, with their sizes."""
        found = []
        for path in self.folder.glob("*.safetensors"):
            if path.name.endswith(".tmp.safetensors"):
                path.unlink(missing_ok=True)
                continue
            try:
                found.append((path.stat().st_mtime_ns, bytes.fromhex(path.stem), path.stat().st_size))
            except (OSError, ValueError):
                continue
        for _, digest, size in sorted(found):
            self._files[digest] = size
        self.nbytes = sum(self._files.values())
        self._pending: list[OrderedDict[bytes, _Block]] = []
        """Blocks to write, one group per finished sequence, oldest group first."""
        self._group_of: dict[bytes, OrderedDict[bytes, _Block]] = {}
        self._pending_bytes = 0
        self._bound()

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._files

    def __len__(self) -> int:
        return len(self._files)

    def _path(self, digest: bytes) -> Path:
        return self.folder / f"{digest.hex()}.safetensors"

    def load(self, digest: bytes, layers: int) -> _Block | None:
        """A block read back, or None (and the file removed) when it cannot be used."""
        path = self._path(digest)
        try:
            arrays = cast(dict[str, mx.array], mx.load(str(path)))  # a safetensors file: named arrays
            keys, values = arrays["k"], arrays["v"]
            if any(a.ndim != 5 or a.shape[0] != layers or a.shape[3] != self.block_tokens for a in (keys, values)):
                raise ValueError("wrong shape")
            os.utime(path)
        except Exception as exc:  # noqa: BLE001 (a damaged or foreign file is a miss, never an error)
            logger.warning("prefix cache: dropping unreadable block %s: %s", path.name, exc)
            self._drop(digest)
            return None
        self._files.move_to_end(digest)
        return _Block.of(keys, values)

    def queue(self, blocks: list[tuple[bytes, _Block]], limit_bytes: int) -> None:
        """Write a finished sequence's ``blocks`` (its chain, root first) later, before those of
        earlier sequences (:meth:`write_one`), so that the newest whole chain reaches the disk
        first; the oldest pending groups give way past ``limit_bytes``."""
        group: OrderedDict[bytes, _Block] = OrderedDict()
        for digest, block in blocks:
            if digest in self._files:
                continue
            earlier = self._group_of.get(digest)
            if earlier is not None:
                self._pending_bytes -= earlier.pop(digest).nbytes
            group[digest] = block
            self._group_of[digest] = group
            self._pending_bytes += block.nbytes
        if group:
            self._pending.append(group)
        while self._pending_bytes > limit_bytes and len(self._pending) > 1:
            for digest, block in self._pending.pop(0).items():
                self._pending_bytes -= block.nbytes
                del self._group_of[digest]

    @property
    def pending(self) -> int:
        return sum(len(group) for group in self._pending)

    def write_one(self) -> bool:
        """Write one pending block: the newest sequence's first; False when nothing was pending."""
        while self._pending and not self._pending[-1]:
            self._pending.pop()
        if not self._pending:
            return False
        group = self._pending[-1]
        digest, block = group.popitem(last=False)
        del self._group_of[digest]
        self._pending_bytes -= block.nbytes
        # Written from copies: reading an array on the host moves its pages there when the
        # backend keeps memory in CUDA managed memory, and the block itself must stay on the GPU.
        arrays = {"k": block.keys * 1, "v": block.values * 1}
        mx.eval(list(arrays.values()))
        path = self._path(digest)
        tmp = path.with_name(f"{digest.hex()}.tmp.safetensors")
        try:
            mx.save_safetensors(str(tmp), arrays, metadata={"format": FORMAT})
            os.replace(tmp, path)
            size = path.stat().st_size
        except OSError as exc:  # a full or read-only disk costs the disk tier, not the request
            logger.warning("prefix cache: cannot write %s: %s", path, exc)
            tmp.unlink(missing_ok=True)
            return True
        finally:
            release(arrays)
        self._files[digest] = size
        self.nbytes += size
        self._bound()
        return True

    def flush(self, seconds: float) -> None:
        """Write pending blocks for at most ``seconds`` (before the process exits)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.write_one():
            pass

    def _bound(self) -> None:
        while self.nbytes > self.max_bytes and self._files:
            self._drop(next(iter(self._files)))

    def _drop(self, digest: bytes) -> None:
        self.nbytes -= self._files.pop(digest, 0)
        self._path(digest).unlink(missing_ok=True)


def release(arrays: dict[str, mx.array]) -> None:
    """Drop ``arrays`` (this is their last reference) with their memory given back to the system,
    not to MLX's buffer cache, whose other buffers stay (the CPU's allocator trims its small cache
    to the new limit instead). For arrays read on the host: where the backend keeps memory in CUDA
    managed memory their pages are on the host now, and a buffer the cache handed to the next GPU
    step would fault them back, page by page."""
    limit = mx.set_cache_limit(0)
    try:
        arrays.clear()
    finally:
        mx.set_cache_limit(limit)


def _forget_stale(root: Path, owner: str, identity: str) -> None:
    """Remove the blocks an earlier version of the same checkpoint left (they can never match)."""
    for marker in root.glob("*/model.json"):
        if marker.parent.name == identity:
            continue
        try:
            stale = json.loads(marker.read_text()).get("path") == owner
        except (OSError, ValueError):
            continue
        if stale:
            shutil.rmtree(marker.parent, ignore_errors=True)


class PrefixCache:
    """Longest cached block-aligned prefix of a prompt, in memory and optionally on disk."""

    def __init__(self, *, layers: int, block_tokens: int, max_bytes: int, disk: DiskTier | None = None) -> None:
        self.layers = layers
        self.block_tokens = block_tokens
        self.max_bytes = max_bytes
        self.disk = disk
        self._blocks: OrderedDict[bytes, _Block] = OrderedDict()
        """In memory, least recently used first."""
        self._children: dict[bytes, dict[bytes, _Block]] = {}
        """The blocks in memory after each block, oldest first (for a partial last block)."""
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def fetch(self, tokens: Sequence[int]) -> tuple[list[KVCache] | None, int]:
        """A fresh cache holding the longest cached prefix of ``tokens`` (leaving at least one
        token to prefill), and its length; (None, 0) without one.

        Whole blocks first; after at least one, the start of a block that follows the last one
        in memory (one of the :data:`SIBLINGS_SCANNED` most recent) when its first tokens are
        the prompt's next ones, so that a prompt sent again is reused to its last token."""
        size = self.block_tokens
        count = (len(tokens) - 1) // size
        if count == 0:
            return None, 0
        found: list[_Block] = []
        digests = block_digests(tokens, size, count)
        parent = ROOT
        for j, digest in enumerate(digests):
            block = self._blocks.get(digest)
            if block is None and self.disk is not None and digest in self.disk:
                block = self.disk.load(digest, self.layers)
                if block is not None:
                    self._add(digest, block, parent, tuple(tokens[j * size : (j + 1) * size]))
            if block is None:
                break
            found.append(block)
            parent = digest
        if not found:
            return None, 0
        self._touch(digests[: len(found)])
        cached = len(found) * size
        tail, partial = self._partial(parent, tokens[cached : len(tokens) - 1])
        pieces = [(b, size) for b in found] + ([(tail, partial)] if tail is not None else [])
        keys = mx.concatenate([b.keys[..., :n, :] for b, n in pieces], axis=-2)
        values = mx.concatenate([b.values[..., :n, :] for b, n in pieces], axis=-2)
        cache = []
        for i in range(self.layers):
            c = KVCache()
            c.keys, c.values, c.offset = keys[i], values[i], cached + partial
            cache.append(c)
        self._bound(self.max_bytes)
        return cache, cached + partial

    def _partial(self, parent: bytes, rest: Sequence[int]) -> tuple[_Block | None, int]:
        """The recent child of ``parent`` sharing the most leading tokens with ``rest``, and how many."""
        best, shared = None, 0
        children = self._children.get(parent) or {}
        for block in islice(reversed(children.values()), SIBLINGS_SCANNED):
            n = 0
            for a, b in zip(block.tokens, rest):
                if a != b:
                    break
                n += 1
            if n > shared:
                best, shared = block, n
        return best, shared

    def insert(self, tokens: Sequence[int], cache: Sequence[Any]) -> None:
        """Keep the blocks of a finished sequence (``tokens``: every token its KV covers)."""
        if len(cache) != self.layers or not blockable(cache) or cache[0].keys is None:
            return
        size = self.block_tokens
        covered = min(len(tokens), min(c.offset for c in cache))
        digests = block_digests(tokens, size, covered // size)
        spans = [(d, j * size, (j + 1) * size, digests[j - 1] if j else ROOT) for j, d in enumerate(digests)]
        if covered % size and digests:  # the last, partial block: in memory only, found by its tokens
            tail = array("q", tokens[len(digests) * size : covered]).tobytes()
            partial = hashlib.blake2b(digests[-1] + b"partial" + tail, digest_size=16).digest()
            spans.append((partial, len(digests) * size, covered, digests[-1]))
        new: list[tuple[bytes, _Block, bytes, tuple[int, ...]]] = []
        wanted = [(digest, start, end, parent) for digest, start, end, parent in spans if digest not in self._blocks]
        if wanted:  # the layers stacked once (a copy per layer), then one copy per block
            first, last = wanted[0][1], wanted[-1][2]
            keys = mx.stack([c.keys[..., first:last, :] for c in cache])
            values = mx.stack([c.values[..., first:last, :] for c in cache])
            for digest, start, end, parent in wanted:
                block = _Block.of(mx.contiguous(keys[..., start - first : end - first, :]),
                                  mx.contiguous(values[..., start - first : end - first, :]))
                new.append((digest, block, parent, tuple(tokens[start:end])))
            # Copied behind the decode step in flight, without waiting for it: a wait here, once
            # per finished sequence, stalled the host while the GPU drained.
            mx.async_eval([a for _, b, _, _ in new for a in (b.keys, b.values)])
        for digest, block, parent, block_tokens in new:
            self._add(digest, block, parent, block_tokens)
        if self.disk is not None:
            self.disk.queue([(d, self._blocks[d]) for d in digests if d in self._blocks], self.max_bytes)
        self._touch([d for d, *_ in spans])
        self._bound(self.max_bytes)

    def trim_to(self, n_bytes: int) -> None:
        """Evict least recently used blocks until at most ``n_bytes`` stay in memory."""
        self._bound(max(0, n_bytes))

    def _add(self, digest: bytes, block: _Block, parent: bytes, tokens: tuple[int, ...]) -> None:
        block.parent, block.tokens = parent, tokens
        self._blocks[digest] = block
        self._children.setdefault(parent, {})[digest] = block
        self.nbytes += block.nbytes

    def _touch(self, digests: list[bytes]) -> None:
        for digest in reversed(digests):  # the root last: it is evicted after its descendants
            if digest in self._blocks:
                self._blocks.move_to_end(digest)

    def _bound(self, n_bytes: int) -> None:
        while self.nbytes > n_bytes and self._blocks:
            digest, block = self._blocks.popitem(last=False)
            self.nbytes -= block.nbytes
            siblings = self._children.get(block.parent)
            if siblings is not None:
                siblings.pop(digest, None)
                if not siblings:
                    del self._children[block.parent]
