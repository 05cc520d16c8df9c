"""The GGUF header, parsed in pure Python: metadata and the tensor table, no weights read.

Knowing every tensor's real type lets the importer refuse what it cannot import faithfully,
naming the culprit, before anyone waits for a multi-gigabyte load. Counts and lengths are
bounds-checked, so a corrupt or truncated file fails with :class:`GGUFImportError`.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FILE_TYPE_NAMES",
    "GGML_TYPE_NAMES",
    "GGUFHeader",
    "GGUFImportError",
    "GGUFTensorInfo",
    "read_gguf_header",
    "tensor_index",
]


class GGUFImportError(Exception):
    """A GGUF file cannot be imported; the message names what is wrong or unsupported."""


# ggml tensor type ids (ggml.h, enum ggml_type).
GGML_TYPE_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K",
    16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S",
    22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
    29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}
#: Types imported faithfully. Others are refused even where ``mx.load`` accepts them:
#: it converts e.g. Q2_K / Q4_K / Q6_K to float16 without saying so, and in a spot check its

# llama.cpp's llama_ftype, for the inspect summary only.
FILE_TYPE_NAMES: dict[int, str] = {
    0: "ALL_F32", 1: "MOSTLY_F16", 2: "MOSTLY_Q4_0", 3: "MOSTLY_Q4_1", 7: "MOSTLY_Q8_0",
    8: "MOSTLY_Q5_0", 9: "MOSTLY_Q5_1", 10: "MOSTLY_Q2_K", 11: "MOSTLY_Q3_K_S",
    12: "MOSTLY_Q3_K_M", 13: "MOSTLY_Q3_K_L", 14: "MOSTLY_Q4_K_S", 15: "MOSTLY_Q4_K_M",
    16: "MOSTLY_Q5_K_S", 17: "MOSTLY_Q5_K_M", 18: "MOSTLY_Q6_K", 32: "MOSTLY_BF16",
}

_SCALAR_FORMATS: dict[int, str] = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
    10: "<Q", 11: "<q", 12: "<d",
}
_ARRAY_DTYPES: dict[int, str] = {
    0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
    10: "<u8", 11: "<i8", 12: "<f8",
}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor's header entry; ``shape`` is in row-major (numpy / MLX) order."""

    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int

    @property
    def type_name(self) -> str:
        return GGML_TYPE_NAMES.get(self.type_id, f"unknown type id {self.type_id}")


@dataclass
class GGUFHeader:
    """Everything in a GGUF file except the tensor data."""

    version: int
    metadata: dict[str, Any]
    tensors: list[GGUFTensorInfo] = field(default_factory=list)
    data_offset: int = 0
    file_size: int = 0


class _Cursor:
    """Bounds-checked little-endian reader over an mmap, so corrupt counts fail cleanly."""

    def __init__(self, buf: mmap.mmap, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFImportError("corrupt or truncated GGUF header")

    def scalar(self, fmt: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        self.need(n)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype == _GGUF_STRING:
            return self.string()
        if vtype == _GGUF_ARRAY:
            return self.array()
        fmt = _SCALAR_FORMATS.get(vtype)
        if fmt is None:
            raise GGUFImportError(f"corrupt GGUF header: unknown metadata value type {vtype}")
        return self.scalar(fmt)

    def array(self) -> list[Any]:
        itype = self.scalar("<I")
        count = self.scalar("<Q")
        if itype == _GGUF_STRING:
            self.need(count * 8)  # every string costs at least its length field
            return [self.string() for _ in range(count)]
        if itype == _GGUF_ARRAY:
            return [self.array() for _ in range(count)]
        dtype = _ARRAY_DTYPES.get(itype)
        if dtype is None:
            raise GGUFImportError(f"corrupt GGUF header: unknown array item type {itype}")
        nbytes = count * np.dtype(dtype).itemsize
        self.need(nbytes)
        arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).copy()
        self.pos += nbytes
        values: list[Any] = arr.astype(bool).tolist() if itype == 7 else arr.tolist()
        return values


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Parse a GGUF file's metadata and tensor table without touching tensor data.

    Raises GGUFImportError for anything that is not a readable little-endian GGUF v2/v3 file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size < 24:
                raise GGUFImportError(f"{path} is not a GGUF file (too small)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse_header(buf, size, path)
    except OSError as exc:
        raise GGUFImportError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _parse_header(buf: mmap.mmap, size: int, path: Path) -> GGUFHeader:
    cur = _Cursor(buf, size)
    cur.need(4)
    if buf[0:4] != b"GGUF":
        raise GGUFImportError(f"{path} is not a GGUF file (bad magic {bytes(buf[0:4])!r})")
    cur.pos = 4
    version = cur.scalar("<I")
    if version > 0xFFFF:
        raise GGUFImportError(f"{path}: big-endian GGUF files are not supported")
    if version not in (2, 3):
        raise GGUFImportError(f"{path}: unsupported GGUF version {version} (supported: 2, 3)")
    n_tensors = cur.scalar("<Q")
    n_kv = cur.scalar("<Q")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.scalar("<I"))
    tensors = [_read_tensor_info(cur) for _ in range(n_tensors)]
    alignment = int(metadata.get("general.alignment", 32)) or 32
    data_offset = -(-cur.pos // alignment) * alignment
    return GGUFHeader(version, metadata, tensors, data_offset, size)


def _read_tensor_info(cur: _Cursor) -> GGUFTensorInfo:
    name = cur.string()
    n_dims = cur.scalar("<I")
    if n_dims > 8:
        raise GGUFImportError(f"corrupt GGUF header: tensor {name} has {n_dims} dimensions")
    dims = [cur.scalar("<Q") for _ in range(n_dims)]
    type_id = cur.scalar("<I")
    offset = cur.scalar("<Q")
    return GGUFTensorInfo(name, tuple(reversed(dims)), type_id, offset)


def tensor_index(header: GGUFHeader) -> dict[str, GGUFTensorInfo]:
    return {t.name: t for t in header.tensors}
