"""``models.<id>.distributed``: a model served by a group of ranks over several hosts or GPUs.

The keys map onto ``mlx.launch`` (which starts the group) and mlx-lm's ``sharded_load`` (which
splits the model); see the README section "One model on several machines".
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mlx_router.engine.types import DistributedOptions

__all__ = ["DistributedConfig", "hostfile_hosts"]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def hostfile_hosts(path: str) -> tuple[tuple[str, ...], list[list[str]]]:
    """The ssh names and IP lists of an ``mlx.launch`` hostfile (raises ValueError, phrased for
    the operator)."""
    try:
        data = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"hostfile {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"hostfile {path} is not readable JSON ({exc})") from None
    hosts = data.get("hosts") if isinstance(data, dict) else data
    if not isinstance(hosts, list) or not hosts:
        raise ValueError(f"hostfile {path} must hold a list of hosts (or an object with 'hosts')")
    names, ips = [], []
    for i, host in enumerate(hosts):
        if not isinstance(host, dict) or not isinstance(host.get("ssh"), str) or not host["ssh"]:
            raise ValueError(f"hostfile {path}: host {i} needs an 'ssh' name")
        names.append(host["ssh"])
        ips.append([str(ip) for ip in host.get("ips", [])])
    return tuple(names), ips


class DistributedConfig(BaseModel):
    """One rank per host entry; rank 0 is the first and talks to the router."""

    model_config = ConfigDict(extra="forbid")

    hosts: list[str] | None = Field(
        None,
        description="One rank per entry, rank 0 first: IP addresses for ring (127.0.0.1 is started without ssh; "
        "repeat it for several ranks on this machine). Give this or hostfile.",
    )
    hostfile: str | None = Field(
        None,
        description="An mlx.launch hostfile (JSON: hosts with 'ssh', 'ips' and, for jaccl, 'rdma'). Give this or hosts.",
    )
    backend: Literal["ring", "jaccl", "mpi", "nccl"] = Field(
        "ring", description="MLX distributed backend: ring (TCP), jaccl (RDMA over Thunderbolt 5), mpi, nccl (CUDA)."
    )
    strategy: Literal["pipeline", "tensor"] = Field(
        "tensor",
        description="tensor: every layer split across ranks (most architectures); pipeline: layers divided "
        "between ranks (architectures with pipeline support: qwen2, qwen3_moe, deepseek_v3, glm4_moe, ...).",
    )
    python: str | None = Field(None, description="The Python on every host; default: the router's own.")
    cwd: str | None = Field(None, description="Working directory of the ranks on every host.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables for every rank.")
    port: int | None = Field(
        None,
        ge=1024,
        le=65535,
        description="ring/jaccl: first port (ring uses one per rank); nccl: the coordinator port. Default: a free one.",
    )
    router_address: str = Field(
        "127.0.0.1", description="Address of this machine that rank 0 connects back to (when rank 0 is another host)."
    )
    step_timeout: float = Field(
        120.0, gt=0, description="Seconds a rank waits on one step or the next plan before it stops the group."
    )
    connect_timeout: float = Field(10.0, gt=0, description="ssh connect timeout of the checks made before a launch.")

    @field_validator("hosts")
    @classmethod
    def _enough_hosts(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if len(value) < 2:
                raise ValueError("list at least 2 hosts (one rank each)")
            if any(not h or h != h.strip() or "," in h for h in value):
                raise ValueError("host names must be non-empty, without spaces or commas")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not k or not all(c.isalnum() or c == "_" for c in k)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not an environment variable name")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DistributedConfig:
        if (self.hosts is None) == (self.hostfile is None):
            raise ValueError("give exactly one of 'hosts' and 'hostfile'")
        if self.hostfile is not None:
            names, ips = hostfile_hosts(self.hostfile)
            if len(names) < 2:
                raise ValueError(f"hostfile {self.hostfile} lists {len(names)} host; at least 2 are needed")
            needs_ips = self.backend == "ring" and any(not i for i in ips)
        else:
            if self.backend == "jaccl":
                raise ValueError("backend 'jaccl' needs a hostfile with the RDMA devices (distributed.hostfile)")
            names, needs_ips = tuple(self.hosts or ()), False
            if self.backend == "ring" and not all(_is_ip(h) for h in names):
                bad = next(h for h in names if not _is_ip(h))
                raise ValueError(
                    f"hosts: the ring backend needs IP addresses (got {bad!r}); give a hostfile with 'ssh' names and 'ips'"
                )
        if needs_ips:
            raise ValueError(f"hostfile {self.hostfile}: the ring backend needs 'ips' for every host")
        if self.hosts is not None and self.backend in ("ring", "nccl"):
            loopback = [h for h in self.hosts if ipaddress.ip_address(h).is_loopback] if all(map(_is_ip, self.hosts)) else []
            if loopback and len(loopback) < len(self.hosts):
                raise ValueError(
                    f"hosts: {loopback[0]} is reachable only from this machine; next to other hosts, list this "
                    "machine by an address they reach"
                )
        if self.backend == "nccl" and self.hosts is not None and not _is_ip(self.hosts[0]):
            raise ValueError(f"hosts: rank 0 of the nccl backend needs an IP address (got {self.hosts[0]!r})")
        return self

    def host_names(self) -> tuple[str, ...]:
        if self.hostfile is not None:
            return hostfile_hosts(self.hostfile)[0]
        return tuple(self.hosts or ())

    def to_options(self) -> DistributedOptions:
        return DistributedOptions(
            hosts=self.host_names(),
            backend=self.backend,
            strategy=self.strategy,
            hostfile=str(Path(self.hostfile).expanduser().resolve()) if self.hostfile else None,
            python=self.python,
            cwd=self.cwd,
            env=tuple(sorted(self.env.items())),
            port=self.port,
            router_address=self.router_address,
            step_timeout=self.step_timeout,
            connect_timeout=self.connect_timeout,
        )
