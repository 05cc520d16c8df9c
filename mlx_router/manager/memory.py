"""Memory pressure: what the machine has left, in four levels.

Levels (see docs/MEMORY_PRESSURE.md for the numbers):

* ``critical`` — available memory below half of ``memory_threshold_gb``, or below the threshold
  while swap use is at or above ``swap_critical_percent``;
* ``high`` — available memory below ``memory_threshold_gb``, or below twice the threshold while
  swap use is at or above ``swap_high_percent``;
* ``moderate`` — available memory below twice the threshold, or Linux PSI reports memory stalls
  (``some avg10`` ≥ 10 %);
* ``normal`` — otherwise. Swap use alone never raises the level: macOS keeps swap files around
  on healthy machines, which made the old project report "critical" on idle Macs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

from mlx_router.config.settings import Defaults

__all__ = ["MemorySnapshot", "ResourceMonitor", "gpu_memory_bytes", "memory_budget_bytes", "pressure_level"]

GB = 1024**3
PSI_PATH = Path("/proc/pressure/memory")


@dataclass(frozen=True)
class MemorySnapshot:
    total_bytes: int
    available_bytes: int
    swap_percent: float
    psi_some_avg10: float | None
    level: str

    def to_dict(self) -> dict[str, object]:
        return {
            "total_gb": round(self.total_bytes / GB, 2),
            "available_gb": round(self.available_bytes / GB, 2),
            "used_percent": round(100 * (1 - self.available_bytes / max(self.total_bytes, 1)), 1),
            "swap_percent": round(self.swap_percent, 1),
            "psi_some_avg10": self.psi_some_avg10,
            "pressure": self.level,
        }


def pressure_level(
    available_gb: float, swap_percent: float, psi_some_avg10: float | None, defaults: Defaults
) -> str:
    """The pure rule behind the levels (documented in the module docstring)."""
    threshold = defaults.memory_threshold_gb
    if available_gb < threshold / 2 or (available_gb < threshold and swap_percent >= defaults.swap_critical_percent):
        return "critical"
    if available_gb < threshold or (available_gb < 2 * threshold and swap_percent >= defaults.swap_high_percent):
        return "high"
    if available_gb < 2 * threshold or (psi_some_avg10 is not None and psi_some_avg10 >= 10.0):
        return "moderate"
    return "normal"


def _read_psi() -> float | None:
    try:
        first = PSI_PATH.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    for field in first.split():
        if field.startswith("avg10="):
            try:
                return float(field.removeprefix("avg10="))
            except ValueError:
                return None
    return None


class ResourceMonitor:
    """Reads system memory (psutil, Linux PSI) and derives the pressure level."""

    def __init__(self, defaults: Defaults) -> None:
        self.defaults = defaults

    def snapshot(self) -> MemorySnapshot:
        vm = psutil.virtual_memory()
        swap = psutil.swap_memory()
        psi = _read_psi()
        level = pressure_level(vm.available / GB, swap.percent, psi, self.defaults)
        return MemorySnapshot(vm.total, vm.available, swap.percent, psi, level)


def gpu_memory_bytes() -> int | None:
    """Total memory of the first NVIDIA GPU (``nvidia-smi``), or None where there is none.

    On Apple Silicon the GPU shares the system memory, so the system total applies."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        return int(out.splitlines()[0].strip()) * 1024 * 1024
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def memory_budget_bytes(defaults: Defaults) -> int:
    """Bytes all resident models may take together: ``defaults.memory_budget_gb``, or by default
    75 % of the GPU's memory (NVIDIA) or of the system memory (Apple Silicon, CPU)."""
    if defaults.memory_budget_gb is not None:
        return int(defaults.memory_budget_gb * GB)
    total = gpu_memory_bytes() or psutil.virtual_memory().total
    return int(total * 0.75)
