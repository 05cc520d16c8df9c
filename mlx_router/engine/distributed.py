"""Router side of a model served by a group of processes (one rank per host entry).

The group is started as one unit by ``mlx.launch``, MLX's own launcher: it starts the local
ranks itself and reaches remote hosts over ssh, and sets up the backend (ring, JACCL, MPI,
NCCL). Each rank runs :mod:`mlx_router.engine.distributed_rank`. Rank 0 connects back to a
listener of this process (with a one-time key sent on the launcher's standard input, which
``mlx.launch`` hands to every rank) and from then on speaks the ordinary worker protocol, so
:class:`GroupClient` is a :class:`~mlx_router.engine.client.WorkerClient` whose "process" is the
launcher.

Before a launch, every host is checked (ssh reachable, its Python present, local ports free), so
that a group that cannot start fails its load with the host and the reason. The launcher runs in
a session of its own: stopping the group ends that session (the launcher, the local ranks and
the ssh connections to the remote ones), and every rank also leaves by itself when its launcher
or its ssh connection goes away.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Listener
from pathlib import Path
from typing import IO, Any

from mlx_router.engine.client import EngineFailure, WorkerClient, _child_environment, how_it_ended
from mlx_router.engine.types import DistributedOptions, EngineError, LoadInfo
from mlx_router.errors import redact_paths

__all__ = [
    "GroupClient",
    "GroupLaunchError",
    "host_shares",
    "is_local_host",
    "launch_command",
    "this_machine_names",
]

logger = logging.getLogger(__name__)

LOCAL_HOST = "127.0.0.1"
"""The one host name ``mlx.launch`` starts without ssh."""

_RANK_EXIT = re.compile(r"Node with rank (\d+) (?:exited with code (-?\d+)|was killed)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LAUNCHER = "import sys; from mlx._distributed_utils.launch import main; sys.argv[0] = 'mlx.launch'; main()"
"""``mlx.launch`` run by the router's Python (the console script may not be on PATH)."""


class GroupLaunchError(Exception):
    """A group that could not start, with the host at fault and why (for the load failure)."""


def is_local_host(host: str) -> bool:
    return host == LOCAL_HOST


def python_of(options: DistributedOptions) -> str:
    return options.python or sys.executable


def rank_command(options: DistributedOptions, connect: str, pytorch: bool = False) -> list[str]:
    """What every host runs: one rank (``pytorch``: it may import an installed PyTorch)."""
    return [
        python_of(options),
        "-m",
        "mlx_router.engine.distributed_rank",
        "--backend",
        options.backend,
        "--strategy",
        options.strategy,
        "--connect",
        connect,
        "--step-timeout",
        str(options.step_timeout),
        *(["--pytorch"] if pytorch else []),
    ]


def rank_environment(options: DistributedOptions) -> dict[str, str]:
    """Variables every rank gets: the configured ones, and PYTHONPATH to this checkout unless set."""
    env = dict(options.env)
    env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    return env


def launch_command(options: DistributedOptions, connect: str, port: int | None, pytorch: bool = False) -> list[str]:
    """The ``mlx.launch`` command line that starts the group."""
    cmd = [sys.executable, "-c", _LAUNCHER, "--backend", options.backend]
    if options.hostfile:
        cmd += ["--hostfile", options.hostfile]
    else:
        hosts, repeat = _repeated(options.hosts)
        cmd += ["--hosts", ",".join(hosts)] + (["-n", str(repeat)] if repeat > 1 else [])
    if port is not None:
        cmd += ["--nccl-port" if options.backend == "nccl" else "--starting-port", str(port)]
    if options.cwd:
        cmd += ["--cwd", options.cwd]
    for key, value in rank_environment(options).items():
        cmd += ["--env", f"{key}={value}"]
    return [*cmd, "--", *rank_command(options, connect, pytorch)]


def _repeated(hosts: tuple[str, ...]) -> tuple[list[str], int]:
    """``a,a,b,b`` as ``(["a", "b"], 2)``: mlx.launch's ``-n`` form, which for NCCL also gives
    the ranks of one host their own GPU (``CUDA_VISIBLE_DEVICES`` = rank modulo ``-n``)."""
    for repeat in range(len(hosts), 1, -1):
        if len(hosts) % repeat == 0:
            distinct = list(hosts[::repeat])
            if all(hosts[i] == distinct[i // repeat] for i in range(len(hosts))):
                return distinct, repeat
    return list(hosts), 1


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((LOCAL_HOST, port))
        except OSError:
            return False
    return True


def pick_port(options: DistributedOptions) -> int | None:
    """The first port of the group: the configured one after checking the local ones are free,
    else a block the operating system says is free. MPI needs none."""
    if options.backend == "mpi":
        return None
    local = sum(1 for h in options.hosts if is_local_host(h))
    count = len(options.hosts) if options.backend == "ring" else 1
    if options.port is not None:
        busy = [p for p in range(options.port, options.port + count) if local and not _port_free(p)]
        if busy:
            raise GroupLaunchError(f"host {LOCAL_HOST}: port {busy[0]} is busy (distributed.port)")
        return options.port
    for _ in range(20):
        with socket.socket() as sock:
            sock.bind((LOCAL_HOST, 0))
            first = int(sock.getsockname()[1])
        if first + count < 65536 and all(_port_free(p) for p in range(first, first + count)):
            return first
    raise GroupLaunchError(f"host {LOCAL_HOST}: no {count} free consecutive ports")


def check_hosts(options: DistributedOptions) -> None:
    """Fail early, naming the host, when a rank could not start there."""
    python = python_of(options)
    for host in dict.fromkeys(options.hosts):
        if is_local_host(host):
            if not os.access(python, os.X_OK):
                raise GroupLaunchError(f"host {host}: no Python at {python} (distributed.python)")
            continue
        probe = [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={max(1, int(options.connect_timeout))}",
            host,
            _probe_script(options),
        ]
        try:
            done = subprocess.run(probe, capture_output=True, text=True, timeout=options.connect_timeout + 30, check=False)
        except subprocess.TimeoutExpired:
            raise GroupLaunchError(f"host {host}: no answer over ssh within {options.connect_timeout:.0f} s") from None
        except FileNotFoundError:
            raise GroupLaunchError("ssh is not installed on this machine") from None
        last = _last_line(done.stderr)
        if done.returncode == 255:
            raise GroupLaunchError(f"host {host} is unreachable over ssh: {last or 'connection failed'}")
        if done.returncode == 127:
            raise GroupLaunchError(f"host {host}: no Python at {python} (distributed.python)")
        if done.returncode != 0:
            raise GroupLaunchError(f"host {host}: {python} cannot run a rank: {last or f'exit code {done.returncode}'}")


def _probe_script(options: DistributedOptions) -> str:
    """What the ssh check runs on a host: the rank's imports, in the rank's directory and
    environment."""
    env = " ".join(shlex.quote(f"{k}={v}") for k, v in rank_environment(options).items())
    imports = shlex.quote("import mlx.core, mlx_router.engine.distributed_rank")
    script = f"env {env} {shlex.quote(python_of(options))} -c {imports}"
    return f"cd {shlex.quote(options.cwd)} && {script}" if options.cwd else script


def _last_line(text: str) -> str:
    lines = [_ANSI.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    return redact_paths(lines[-1][:300]) if lines else ""


class _Launcher:
    """The ``mlx.launch`` process, seen through the few calls :class:`WorkerClient` makes on a
    process (``is_alive``, ``join``, ``exitcode``, ``pid``, ``kill``). Killing it ends its whole
    session: the launcher, its local ranks and its ssh connections."""

    def __init__(self, popen: subprocess.Popen[bytes], model_id: str, hosts: tuple[str, ...]) -> None:
        self.popen = popen
        self.model_id = model_id
        self.hosts = hosts
        self.rank_exits: dict[int, int | None] = {}
        """Ranks the launcher saw end: exit code (negative: signal), None when it killed them."""
        self.errors: collections.deque[str] = collections.deque(maxlen=20)
        self.exited = threading.Event()
        for stream, level in ((popen.stdout, logging.INFO), (popen.stderr, logging.WARNING)):
            threading.Thread(target=self._read, args=(stream, level), name="group-output", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            try:
                self.popen.stdin.close()
            except OSError:  # the launcher is gone: its end of the pipe may be broken
                pass

    def kill(self) -> None:
        self.signal_group(signal.SIGKILL)

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _read(self, stream: IO[bytes] | None, level: int) -> None:
        if stream is None:
            return
        with stream:
            self._read_lines(stream, level)

    def _read_lines(self, stream: IO[bytes], level: int) -> None:
        for raw in iter(stream.readline, b""):
            line = _ANSI.sub("", raw.decode(errors="replace")).rstrip()
            if not line:
                continue
            found = _RANK_EXIT.search(line)
            if found:
                code = found.group(2)
                self.rank_exits.setdefault(int(found.group(1)), int(code) if code is not None else None)
            elif level == logging.WARNING:
                self.errors.append(line)
            logger.log(level, "[%s group] %s", self.model_id, redact_paths(line))

    def describe_exit(self) -> str:
        """Which rank ended first and how, with the last error line the ranks printed."""
        parts = []
        for rank, code in self.rank_exits.items():
            host = self.hosts[rank] if rank < len(self.hosts) else "?"
            parts.append(f"rank {rank} on {host} {'was stopped' if code is None else how_it_ended(code)}")
            break
        errors = [e for e in self.errors if "Error" in e or "error" in e or "[mlx-router]" in e]
        if errors:
            parts.append(redact_paths(errors[-1][:300]))
        return "; ".join(parts) or f"the group's launcher exited with code {self.exitcode}"


class GroupClient(WorkerClient):
    """A model served by a group of ranks, driven through rank 0 like a single worker."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lost = False

    @property
    def group(self) -> DistributedOptions:
        assert self.options.distributed is not None
        return self.options.distributed

    @property
    def alive(self) -> bool:
        return not self._lost and super().alive

    async def start(self, timeout: float) -> LoadInfo:
        if self.options.vision:
            raise EngineFailure(EngineError("internal", "a vision model cannot be served by a group (text models only)"))
        started = time.monotonic()
        try:
            await self._launch(timeout)
        except GroupLaunchError as exc:
            await self.stop(grace=0)
            raise EngineFailure(EngineError("internal", f"the group could not start: {exc}")) from None
        except BaseException:
            await self.stop(grace=0)
            raise
        self._adopted = True  # the base class now sends ("load", options) to rank 0
        return await super().start(max(1.0, timeout - (time.monotonic() - started)))

    async def _launch(self, timeout: float) -> None:
        group = self.group
        loop = self._expect_start()
        await asyncio.to_thread(check_hosts, group)
        port = await asyncio.to_thread(pick_port, group)
        key = secrets.token_bytes(32)
        listener = Listener((group.router_address, 0), authkey=key)
        host, listen_port = listener.address
        cmd = launch_command(group, f"{host}:{listen_port}", port, self.pytorch)
        env = {"LD_PRELOAD": self.blas_library} if self.blas_library else {}
        with _child_environment(env):
            popen = await asyncio.to_thread(
                subprocess.Popen,
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        self._process = _Launcher(popen, self.options.model_id, group.hosts)
        assert popen.stdin is not None
        popen.stdin.write(key.hex().encode() + b"\n")  # every rank reads it; rank 0 uses it
        popen.stdin.flush()
        accepted: asyncio.Future[Any] = loop.run_in_executor(None, _accept, listener)
        try:
            deadline = time.monotonic() + timeout
            while not accepted.done():
                if not self._process.is_alive():
                    await asyncio.sleep(0.3)  # let the output readers catch the ranks' last words
                    raise GroupLaunchError(self._process.describe_exit())
                if time.monotonic() > deadline:
                    raise GroupLaunchError(f"rank 0 did not connect within {timeout:.0f} s")
                await asyncio.wait({accepted}, timeout=0.2)
        finally:
            listener.close()
        conn = accepted.result()
        if conn is None:
            raise GroupLaunchError(self._process.describe_exit())
        self._conn = conn
        threading.Thread(target=self._read_loop, name="group-reader", daemon=True).start()

    def _on_disconnect(self) -> None:
        """Rank 0's connection closed: stop every rank, then fail what was in flight with the
        reason once the launcher has told which rank ended (never blocking the event loop)."""
        self._lost = True
        launcher = self._process
        if launcher is None or self._closing:
            super()._on_disconnect()
            return

        async def settle() -> None:
            await asyncio.to_thread(launcher.join, 3)
            launcher.signal_group(signal.SIGKILL)
            await asyncio.to_thread(launcher.join, 2)
            WorkerClient._on_disconnect(self)

        assert self._loop is not None
        self._loop.create_task(settle())

    def exit_reason_for(self, code: int | None) -> str:
        launcher = self._process
        if self._closing:
            return "stopped"
        assert isinstance(launcher, _Launcher)
        return f"group stopped: {launcher.describe_exit()}"

    def _stopped_from_outside(self, code: int | None) -> bool:
        """The first rank to end (the launcher stops the others), else the launcher, ended by a
        stop signal."""
        launcher = self._process
        if isinstance(launcher, _Launcher) and launcher.rank_exits:
            code = next(iter(launcher.rank_exits.values()))
        return super()._stopped_from_outside(code)

    async def stop(self, grace: float = 5.0) -> None:
        await super().stop(grace)
        launcher = self._process
        if isinstance(launcher, _Launcher):
            launcher.kill()  # whatever the launcher left behind in its session


def _accept(listener: Listener) -> Any:
    try:
        return listener.accept()
    except (OSError, EOFError):  # closed because the launch failed, or a wrong key
        return None


@functools.cache
def this_machine_names() -> frozenset[str]:
    """Host names and addresses that mean this machine (for the per-host memory budget)."""
    names = {LOCAL_HOST, "localhost", "::1", socket.gethostname()}
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            names.add(str(info[4][0]))
    except OSError:
        pass
    return frozenset(names)


def host_shares(options: DistributedOptions, total_bytes: int, load_info: LoadInfo | None = None) -> dict[str, int]:
    """Bytes the group takes on each host: every rank's measured share of the weights once
    loaded (else an equal share of ``total_bytes``), plus its share of what the weights do not
    account for (KV, prefix cache)."""
    n = len(options.hosts)
    shares: dict[str, int] = {}
    measured = {r.rank: r.weight_bytes for r in load_info.ranks} if load_info is not None and load_info.ranks else {}
    weights = sum(measured.values())
    for rank, host in enumerate(options.hosts):
        if measured:
            share = measured.get(rank, 0) + max(0, total_bytes - weights) // n
        else:
            share = total_bytes // n
        shares[host] = shares.get(host, 0) + share
    return shares

