"""Groups of ranks without starting one: configuration, the launch command, the per-host shares,
how the launcher's report of a rank's end becomes a reason, and what a worker or group that ends
before it is ready reports."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mlx_router.config.settings import ConfigError, load_settings
from mlx_router.engine import distributed_rank
from mlx_router.engine.client import EngineFailure, WorkerClient
from mlx_router.engine.distributed import (
    GroupLaunchError,
    _Launcher,
    check_hosts,
    host_shares,
    launch_command,
    pick_port,
)
from mlx_router.engine.distributed_rank import _with_seed
from mlx_router.engine.types import (
    DistributedOptions,
    GenerationParams,
    GenerationRequest,
    LoadInfo,
    RankInfo,
    WorkerOptions,
)

HOSTFILE = {
    "hosts": [
        {"ssh": "mac1", "ips": ["10.0.0.1"], "rdma": [None, "rdma_en3"]},
        {"ssh": "mac2", "ips": ["10.0.0.2"], "rdma": ["rdma_en3", None]},
    ]
}


def _load(tmp_path: Path, distributed: Any) -> Any:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"models": {"big": {"distributed": distributed}}}))
    return load_settings(path, environ={}).models["big"].distributed


def _hostfile(tmp_path: Path, data: Any = HOSTFILE) -> str:
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize(
    ("distributed", "message"),
    [
        ({"hosts": ["127.0.0.1"]}, "distributed.hosts: list at least 2 hosts"),
        ({"hosts": ["mac1.local", "mac2.local"]}, "the ring backend needs IP addresses (got 'mac1.local')"),
        ({"hosts": ["10.0.0.1", "10.0.0.2"], "backend": "jaccl"}, "backend 'jaccl' needs a hostfile"),
        ({"hosts": ["gpu1", "gpu2"], "backend": "nccl"}, "rank 0 of the nccl backend needs an IP address"),
        ({"hosts": ["127.0.0.1", "127.0.0.1"], "backend": "gloo"}, "distributed.backend: Input should be"),
        ({"hosts": ["127.0.0.1", "127.0.0.1"], "strategy": "data"}, "distributed.strategy: Input should be"),
        ({"hosts": ["127.0.0.1", "127.0.0.1"], "hostz": 1}, "distributed.hostz: unknown key. Did you mean 'hosts'?"),
        ({}, "give exactly one of 'hosts' and 'hostfile'"),
        ({"hostfile": "/nonexistent/hosts.json"}, "does not exist"),
        ({"hosts": ["127.0.0.1", "127.0.0.1"], "env": {"A-B": "1"}}, "'A-B' is not an environment variable name"),
        ({"hosts": ["127.0.0.1", "10.0.0.2"]}, "127.0.0.1 is reachable only from this machine"),
        ({"hosts": ["127.0.0.1", "127.0.0.1"], "port": 80}, "distributed.port: Input should be greater than or equal to 1024"),
    ],
)
def test_invalid_groups_are_refused_naming_the_key(tmp_path: Path, distributed: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, distributed)
    assert "models.big.distributed" in str(caught.value)
    assert message in str(caught.value)


def test_a_hostfile_gives_the_hosts_and_jaccl_is_accepted(tmp_path: Path) -> None:
    options = _load(tmp_path, {"hostfile": _hostfile(tmp_path), "backend": "jaccl", "strategy": "pipeline"}).to_options()
    assert options.hosts == ("mac1", "mac2")
    assert options.backend == "jaccl" and options.strategy == "pipeline"
    assert options.hostfile == str((tmp_path / "hosts.json").resolve())


def test_a_ring_hostfile_needs_ips(tmp_path: Path) -> None:
    data = {"hosts": [{"ssh": "mac1"}, {"ssh": "mac2"}]}
    with pytest.raises(ConfigError, match="the ring backend needs 'ips' for every host"):
        _load(tmp_path, {"hostfile": _hostfile(tmp_path, data)})


def test_launch_command_is_mlx_launch_around_one_rank(tmp_path: Path) -> None:
    options = DistributedOptions(
        hosts=("10.0.0.1", "10.0.0.2"), backend="ring", strategy="tensor", python="/opt/py/bin/python3", env=(("MLX_X", "1"),)
    )
    cmd = launch_command(options, "127.0.0.1:4000", 32323)
    assert cmd[:2] == [sys.executable, "-c"] and "mlx._distributed_utils.launch" in cmd[2]
    launcher, rank = cmd[: cmd.index("--")], cmd[cmd.index("--") + 1 :]
    assert launcher[3:] == [
        "--backend",
        "ring",
        "--hosts",
        "10.0.0.1,10.0.0.2",
        "--starting-port",
        "32323",
        "--env",
        "MLX_X=1",
        "--env",
        f"PYTHONPATH={Path(__file__).resolve().parents[2]}",
    ]
    assert rank == [
        "/opt/py/bin/python3",
        "-m",
        "mlx_router.engine.distributed_rank",
        "--backend",
        "ring",
        "--strategy",
        "tensor",
        "--connect",
        "127.0.0.1:4000",
        "--step-timeout",
        "120.0",
    ]
    gpus = launch_command(DistributedOptions(hosts=("127.0.0.1",) * 2, backend="nccl"), "x:1", 5000)
    assert gpus[gpus.index("--hosts") : gpus.index("--hosts") + 4] == ["--hosts", "127.0.0.1", "-n", "2"]
    mixed = launch_command(DistributedOptions(hosts=("10.0.0.1", "10.0.0.2", "10.0.0.1")), "x:1", 5000)
    assert mixed[mixed.index("--hosts") + 1] == "10.0.0.1,10.0.0.2,10.0.0.1" and "-n" not in mixed
    nccl = launch_command(DistributedOptions(hosts=("10.0.0.1",) * 2, backend="nccl", hostfile="/h.json"), "x:1", 5000)
    assert "--nccl-port" in nccl and "--hostfile" in nccl and "--hosts" not in nccl
    # defaults.worker_pytorch reaches the ranks, which otherwise hide an installed PyTorch.
    assert launch_command(options, "x:1", 5000, pytorch=True)[-1] == "--pytorch"
    assert distributed_rank._parse_args(rank[3:] + ["--pytorch"]).pytorch
    assert not distributed_rank._parse_args(rank[3:]).pytorch


def test_ports_busy_here_and_missing_python_fail_before_a_launch(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        options = DistributedOptions(hosts=("127.0.0.1", "127.0.0.1"), port=port)
        with pytest.raises(GroupLaunchError, match=f"host 127.0.0.1: port {port} is busy"):
            pick_port(options)
    free = pick_port(DistributedOptions(hosts=("127.0.0.1", "127.0.0.1")))
    assert free is not None and 1024 <= free < 65535
    assert pick_port(DistributedOptions(hosts=("a", "b"), backend="mpi")) is None
    with pytest.raises(GroupLaunchError, match="host 127.0.0.1: no Python at"):
        check_hosts(DistributedOptions(hosts=("127.0.0.1", "127.0.0.1"), python=str(tmp_path / "python")))


def test_host_shares_split_the_cost_by_rank_then_by_measure() -> None:
    options = DistributedOptions(hosts=("127.0.0.1", "127.0.0.1", "10.0.0.2"))
    assert host_shares(options, 900) == {"127.0.0.1": 600, "10.0.0.2": 300}
    ranks = tuple(RankInfo(i, h, "m", 100 + i, w, "gpu") for i, (h, w) in enumerate(zip(options.hosts, (100, 200, 300))))
    info = LoadInfo(1.0, 600, 4096, (2,), True, "gpu", ranks=ranks)
    assert host_shares(options, 900, info) == {"127.0.0.1": 300 + 200, "10.0.0.2": 300 + 100}


def test_the_launchers_report_names_the_rank_that_ended_first() -> None:
    script = (
        "echo 'RuntimeError: [ring] connection to a peer was lost' >&2; "
        "printf '\\033[33m[WARN] Node with rank 1 exited with code -9 \\033[0m\\n' >&2; "
        "printf '\\033[33m[WARN] Node with rank 0 exited with code -15 \\033[0m\\n' >&2"
    )
    popen = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    launcher = _Launcher(popen, "big", ("127.0.0.1", "10.0.0.2"))
    popen.wait(10)
    deadline = time.monotonic() + 10
    while len(launcher.rank_exits) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert launcher.rank_exits == {1: -9, 0: -15}
    assert launcher.describe_exit() == (
        "rank 1 on 10.0.0.2 was killed by signal 9 (SIGKILL); RuntimeError: [ring] connection to a peer was lost"
    )


def test_rank_zero_gives_every_unseeded_sampled_request_a_seed() -> None:
    sampled = GenerationRequest("a", GenerationParams(max_tokens=4, temperature=0.7), prompt="x")
    seeded = _with_seed(("generate", sampled))[1]
    assert seeded.params.seed is not None and seeded.params.temperature == 0.7
    greedy = ("generate", GenerationRequest("b", GenerationParams(max_tokens=4), prompt="x"))
    assert _with_seed(greedy) is greedy
    chosen = ("generate", GenerationRequest("c", GenerationParams(max_tokens=4, temperature=1.0, seed=7), prompt="x"))
    assert _with_seed(chosen) is chosen
    assert _with_seed(("cancel", "a")) == ("cancel", "a")


def _sleeping_worker(loop: asyncio.AbstractEventLoop, *, spare: bool) -> WorkerClient:
    """A worker client whose process (a ``sleep``, through the launcher's process interface)
    never says it is ready."""
    client = WorkerClient(WorkerOptions(model_id="m", model_path=""))
    client._expect_start()
    client._spare = spare
    popen = subprocess.Popen(["sleep", "60"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    client._process = _Launcher(popen, "m", ("127.0.0.1",))
    return client


def _end(client: WorkerClient, sig: signal.Signals) -> None:
    """The process ends by ``sig`` and the client sees its pipe close."""
    assert client.pid is not None
    os.kill(client.pid, sig)
    client._process.join(10)
    client._on_disconnect()


async def test_a_spare_stopped_with_the_routers_process_group_logs_no_unretrieved_failure() -> None:
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    try:
        client = _sleeping_worker(loop, spare=True)
        _end(client, signal.SIGTERM)  # nobody waits for a spare's start
        assert client.exit_reason == "worker process was stopped by signal 15 (SIGTERM)"
        client._started = None
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert unhandled == []


@pytest.mark.parametrize(
    ("sig", "message"),
    [
        (signal.SIGTERM, "the load was stopped: worker process was stopped by signal 15 (SIGTERM)"),
        (signal.SIGKILL, "model load failed: worker process was killed by signal 9 (SIGKILL)"),
    ],
)
async def test_a_load_ended_by_a_stop_signal_is_stopped_not_failed(sig: signal.Signals, message: str) -> None:
    loop = asyncio.get_running_loop()
    client = _sleeping_worker(loop, spare=False)
    loading = loop.create_task(client.start(timeout=30))
    await asyncio.sleep(0.05)
    _end(client, sig)
    with pytest.raises(EngineFailure) as failure:
        await loading
    assert failure.value.error.message == message
