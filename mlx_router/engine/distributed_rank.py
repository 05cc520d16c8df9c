"""One rank of a model served by a group of processes.

Started on every host by ``mlx.launch`` (``python -m mlx_router.engine.distributed_rank``), which
sets up MLX's distributed group (ring, JACCL, MPI or NCCL). Every rank loads its shard with
mlx-lm's ``sharded_load`` (pipeline or tensor parallel) and runs the same
:class:`~mlx_router.engine.batch.BatchScheduler`: the model's forward pass needs every rank at
every step, so every rank must admit, cancel and step the same sequences in the same order.

Rank 0 is the only one the router talks to: it connects back to the router (address on the
command line, key on its standard input, never on a command line) and speaks the worker
protocol of :mod:`mlx_router.engine.worker`. Before each step it broadcasts its *plan* (the
router's messages since the last step, with a seed chosen for every sampled request that has
none) to the other ranks with ``mx.distributed``, as mlx-lm's server does; each rank applies the
plan, then all step together. Logits are identical on every rank (tensor parallel all-reduces,
pipeline all-gathers the last hidden state), so samplers with the same seeds draw the same tokens
and stop at the same place.

A rank never outlives its group: it exits when its standard input closes (the launcher or its
ssh connection went away), and a watchdog ends it when one step or the wait for the next plan
takes longer than ``step_timeout`` (a peer died or its host became unreachable). A failed step
ends the whole group (the ranks could otherwise disagree on the batch); ``mlx.launch`` then stops
the other ranks and the router fails the requests in flight.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import queue
import random
import socket
import sys
import threading
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Client, Connection
from typing import Any

from mlx_router.engine.types import (
    EngineError,
    GenerationRequest,
    LoadInfo,
    RankInfo,
    WorkerOptions,
)
from mlx_router.engine.worker import _reader, _Worker, describe_exception, keep_pytorch_out

__all__ = ["GroupChannel", "main"]

IDLE_POLL_SECONDS = 1.0
"""How long rank 0 waits for the router's next message while nothing runs (the other ranks wait
in the plan broadcast meanwhile, so this is also the group's idle heartbeat)."""


class GroupChannel:
    """Python objects shared across the group with ``all_sum`` (the root adds the bytes, the
    others zeros), as mlx-lm's server shares its requests."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.rank = int(group.rank())
        self.size = int(group.size())

    def share(self, obj: Any, root: int = 0) -> Any:
        """``obj`` of rank ``root`` on every rank.

        The collectives run on mlx-lm's generation stream, the one the batch's forward passes
        (and their own collectives) are queued on: on another stream the backend could pair this
        broadcast with a step's send or all-reduce on one rank and not on the other."""
        import mlx.core as mx
        from mlx_lm.generate import generation_stream

        with mx.stream(generation_stream):
            return self._share(obj, root)

    def _share(self, obj: Any, root: int) -> Any:
        import mlx.core as mx
        import numpy as np

        data = pickle.dumps(obj) if self.rank == root else b""
        size = mx.distributed.all_sum(mx.array(len(data), dtype=mx.int32), group=self.group)
        mx.eval(size)  # on every rank, the root included, in the same order
        if self.rank == root:
            buffer = mx.array(np.frombuffer(data, dtype=np.uint8))
        else:
            buffer = mx.zeros((int(np.asarray(size)),), dtype=mx.uint8)
        total = mx.distributed.all_sum(buffer, group=self.group)
        mx.eval(total)  # every rank takes part, the root included
        return obj if self.rank == root else pickle.loads(np.asarray(total).tobytes())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        return [self.share(obj, root) for root in range(self.size)]


@dataclass
class _Watchdog:
    """Ends the process when one step or plan exchange runs longer than ``timeout``."""

    timeout: float
    on_stall: Any
    busy_since: float | None = None

    def start(self) -> None:
        threading.Thread(target=self._watch, name="rank-watchdog", daemon=True).start()

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            since = self.busy_since
            if since is not None and time.monotonic() - since > self.timeout:
                self.on_stall(time.monotonic() - since)
                os._exit(3)


def _watch_stdin() -> None:
    """The launcher (or, on another host, the ssh connection) went away: leave at once."""
    try:
        while os.read(0, 4096):  # the raw descriptor: no buffer lock held at interpreter exit
            pass
    except OSError:
        pass
    os._exit(2)


class GroupRank(_Worker):
    """A :class:`_Worker` whose loop first agrees with the group on what to do."""

    def __init__(
        self, conn: Connection | None, options: WorkerOptions, channel: GroupChannel, strategy: str, step_timeout: float
    ) -> None:
        super().__init__(conn, options)  # type: ignore[arg-type]  # ranks other than 0 have no pipe and send nothing
        self.channel = channel
        self.strategy = strategy
        self.watchdog = _Watchdog(step_timeout, self._stalled)
        self.requests: set[str] = set()
        """Requests admitted and not finished (rank 0), to fail them if the group stalls."""

    @property
    def rank(self) -> int:
        return self.channel.rank

    def send(self, msg: tuple[Any, ...]) -> None:
        if self.conn is None:
            return
        if msg[0] == "admitted":
            self.requests.add(msg[1].request_id)
        elif msg[0] == "error" and msg[1].request_id:
            self.requests.discard(msg[1].request_id)
        elif msg[0] == "step":  # chunks as field tuples: (request_id, text, completion, prompt, finish, logprobs)
            self.requests.difference_update(fields[0] for fields in msg[1] if fields[4] is not None)
        super().send(msg)

    def _stalled(self, seconds: float) -> None:
        message = f"rank {self.rank} got no answer from the group for {seconds:.0f} s (a rank stopped or its host is unreachable)"
        print(f"[mlx-router] {message}", file=sys.stderr, flush=True)
        if self.conn is None:
            return
        try:
            self.log(logging.ERROR, message)
            for request_id in list(self.requests):
                self.send(("error", EngineError("worker_crashed", f"the model's group stopped: {message}", request_id)))
        except OSError:
            pass

    def _load_shard(self, model_path: str) -> tuple[Any, Any, dict[str, Any]]:
        from mlx_lm.utils import sharded_load

        group = self.channel.group
        pipeline = group if self.strategy == "pipeline" else None
        tensor = group if self.strategy == "tensor" else None
        return sharded_load(model_path, pipeline_group=pipeline, tensor_group=tensor, return_config=True)  # type: ignore[no-any-return]  # mlx-lm's sharded_load is untyped

    def run(self) -> None:
        import mlx.core as mx

        from mlx_router.engine.batch import BatchScheduler
        from mlx_router.engine.lm import LMEngine, classify_exception

        if self.conn is not None:
            threading.Thread(target=_reader, args=(self.conn, self.inbox), daemon=True).start()
        engine: Any = None
        failure: tuple[str, str] | None = None
        try:
            engine = LMEngine.load(
                self.options.model_path,
                context_length=self.options.context_length,
                chat_template=self.options.chat_template,
                loader=self._load_shard,
            )
        except Exception as exc:  # noqa: BLE001 (any load failure is reported by rank 0 for the whole group)
            failure = (classify_exception(exc, None).kind, describe_exception(exc))
        hosts = self.options.distributed.hosts if self.options.distributed else ()
        me = RankInfo(
            rank=self.rank,
            host=hosts[self.rank] if self.rank < len(hosts) else "",
            hostname=socket.gethostname(),
            pid=os.getpid(),
            weight_bytes=int(mx.get_active_memory()),
            backend="gpu" if mx.default_device() == mx.gpu else "cpu",
        )
        reports: list[tuple[RankInfo, tuple[str, str] | None]] = self.channel.gather((me, failure))
        failed = [(info, fail) for info, fail in reports if fail is not None]
        if failed:
            culprit, (kind, message) = failed[0]
            self.send(("load_failed", kind, f"rank {culprit.rank} on {culprit.host or culprit.hostname}: {message}"))
            return
        scheduler = BatchScheduler(engine, self.options.batch)
        ranks = tuple(info for info, _ in reports)
        scheduler.warm_up(self.options.warmup_tokens)
        info: LoadInfo = replace(engine.load_info, weight_bytes=sum(r.weight_bytes for r in ranks), ranks=ranks)
        self.send(("ready", info))
        self.watchdog.start()
        self.loop(scheduler)

    def _take_messages(self, block: bool) -> list[tuple[Any, ...]]:
        """Rank 0: the router's messages since the last step (waiting a little when idle)."""
        messages: list[tuple[Any, ...]] = []
        timeout: float | None = IDLE_POLL_SECONDS if block else None
        while True:
            try:
                msg = self.inbox.get(timeout=timeout) if timeout is not None else self.inbox.get_nowait()
            except queue.Empty:
                return messages
            timeout = None
            messages.append(_with_seed(msg))
            if msg[0] == "shutdown":
                return messages

    def loop(self, scheduler: Any) -> None:
        try:
            self._run_plans(scheduler)
        except Exception as exc:  # noqa: BLE001 (a failed step or a lost peer: the ranks can no longer agree)
            self._group_failed(exc)
            os._exit(1)

    def _run_plans(self, scheduler: Any) -> None:
        while True:
            messages = self._take_messages(block=not scheduler.active) if self.rank == 0 else None
            self.watchdog.busy_since = time.monotonic()
            plan = self.channel.share(messages) or []
            for msg in plan:
                if not self.handle(scheduler, msg):
                    return
            if scheduler.active:
                self.step(scheduler)
            self.watchdog.busy_since = None

    def step(self, scheduler: Any) -> None:
        """One step of the group; a failure is the group's (see :meth:`loop`)."""
        chunks = scheduler.step()
        if chunks:
            self.send(("step", [c.fields() for c in chunks]))

    def _group_failed(self, exc: BaseException) -> None:
        """Fail the requests in flight with the reason (rank 0), and say it on standard error
        (the router logs the ranks' output)."""
        from mlx_router.engine.lm import classify_exception

        reason = f"rank {self.rank}: {describe_exception(exc)}"
        print(f"[mlx-router] the group stops: {reason}", file=sys.stderr, flush=True)
        out_of_memory = classify_exception(exc, None).kind == "out_of_memory"
        try:
            for request_id in list(self.requests):
                if out_of_memory:
                    self.send(("error", classify_exception(exc, request_id)))
                else:
                    self.send(("error", EngineError("worker_crashed", f"the model's group stopped ({reason})", request_id)))
        except OSError:
            pass


def _with_seed(msg: tuple[Any, ...]) -> tuple[Any, ...]:
    """A sampled request without a seed gets one here, so every rank draws the same tokens."""
    if msg[0] != "generate":
        return msg
    request: GenerationRequest = msg[1]
    if request.params.temperature == 0 or request.params.seed is not None:
        return msg
    seed = random.SystemRandom().getrandbits(63)
    return ("generate", replace(request, params=replace(request.params, seed=seed)))


def _for_group(options: WorkerOptions) -> WorkerOptions:
    """The options every rank uses: without the prefix cache's disk tier, whose contents could
    differ between ranks (a rank killed before it flushed) and so make their admissions differ."""
    return replace(options, batch=replace(options.batch, prefix_cache_disk_bytes=0))


def _read_line(fd: int) -> str:
    """One line from a descriptor, byte by byte (nothing past it is consumed)."""
    data = bytearray()
    while not data.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            break
        data += byte
    return data.decode(errors="replace")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="One rank of a model served by a group (started by mlx.launch).")
    parser.add_argument("--backend", required=True, choices=["ring", "jaccl", "mpi", "nccl"])
    parser.add_argument("--strategy", required=True, choices=["pipeline", "tensor"])
    parser.add_argument("--connect", required=True, help="HOST:PORT of the router, for rank 0")
    parser.add_argument("--step-timeout", type=float, default=120.0)
    parser.add_argument("--pytorch", action="store_true", help="let this rank import an installed PyTorch")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if not args.pytorch:
        keep_pytorch_out()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download while serving
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING)
    import mlx.core as mx

    group = mx.distributed.init(strict=True, backend=args.backend)
    rank = int(group.rank())
    # mpirun gives standard input to rank 0 only; mlx.launch's other backends to every rank.
    reads_stdin = args.backend != "mpi" or rank == 0
    key = _read_line(0).strip() if reads_stdin else ""
    if reads_stdin:
        threading.Thread(target=_watch_stdin, name="stdin-watch", daemon=True).start()
    channel = GroupChannel(group)
    conn: Connection | None = None
    options: WorkerOptions | None = None
    if rank == 0:
        host, _, port = args.connect.rpartition(":")
        conn = Client((host, int(port)), authkey=bytes.fromhex(key))
        msg = conn.recv()
        options = _for_group(msg[1]) if msg[0] == "load" else None
    options = channel.share(options)
    if options is None:  # the router went away before sending the model
        return 0
    try:
        GroupRank(conn, options, channel, args.strategy, args.step_timeout).run()
    finally:
        if conn is not None:
            conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
