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

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

import psutil

from mlx_router.config.settings import Defaults

__all__ = ["LEVELS", "MemorySnapshot", "ResourceMonitor", "gpu_memory_bytes", "memory_budget_bytes", "pressure_level"]

GB = 1024**3
_T = TypeVar("_T")
PSI_PATH = Path("/proc/pressure/memory")


@dataclass(frozen=True)
class MemorySnapshot:
    total_bytes: int
    available_bytes: int
    swap_percent: float
    psi_some_avg10: float | None
    level: str
    gpu_total_bytes: int | None = None
    gpu_free_bytes: int | None = None
    """NVIDIA device memory, where there is a GPU with its own memory."""

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "total_gb": round(self.total_bytes / GB, 2),
            "available_gb": round(self.available_bytes / GB, 2),
            "used_percent": round(100 * (1 - self.available_bytes / max(self.total_bytes, 1)), 1),
            "swap_percent": round(self.swap_percent, 1),
            "psi_some_avg10": self.psi_some_avg10,
            "pressure": self.level,
        }
        if self.gpu_total_bytes is not None and self.gpu_free_bytes is not None:
            data["gpu_total_gb"] = round(self.gpu_total_bytes / GB, 2)
            data["gpu_free_gb"] = round(self.gpu_free_bytes / GB, 2)
        return data


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


LEVELS = ("normal", "moderate", "high", "critical")


class ResourceMonitor:
    """Reads system memory (psutil, Linux PSI), on macOS the kernel's pressure level and, on
    NVIDIA, the GPU's own memory, and derives the pressure level: the worst of them (the GPU's
    with the same thresholds, no swap)."""

    READ_INTERVAL = 2.0
    """Seconds a reading that starts a process (``nvidia-smi``, ``sysctl``) is reused: snapshots
    are taken per request."""

    def __init__(self, defaults: Defaults) -> None:
        self.defaults = defaults
        self._has_gpu = shutil.which("nvidia-smi") is not None
        self._readings: dict[str, tuple[float, object]] = {}

    def _cached(self, name: str, read: Callable[[], _T]) -> _T:
        now = time.monotonic()
        taken = self._readings.get(name)
        if taken is None or now - taken[0] >= self.READ_INTERVAL:
            taken = (now, read())
            self._readings[name] = taken
        return cast(_T, taken[1])  # each name is read by one function

    def snapshot(self) -> MemorySnapshot:
        vm = psutil.virtual_memory()
        swap = psutil.swap_memory()
        psi = _read_psi()
        level = pressure_level(vm.available / GB, swap.percent, psi, self.defaults)
        kernel = self._cached("macos", _macos_pressure_level) if sys.platform == "darwin" else None
        if kernel is not None:
            level = max(level, kernel, key=LEVELS.index)
        gpu = self._cached("gpu", _nvidia_smi_memory) if self._has_gpu else None
        if gpu is not None:
            gpu_level = pressure_level(gpu[1] / GB, 0.0, None, self.defaults)
            level = max(level, gpu_level, key=LEVELS.index)
        return MemorySnapshot(
            vm.total, vm.available, swap.percent, psi, level, gpu[0] if gpu else None, gpu[1] if gpu else None
        )


_MACOS_LEVELS = {1: "normal", 2: "high", 4: "critical"}


def _macos_pressure_level() -> str | None:
    """macOS's own verdict (``kern.memorystatus_vm_pressure_level``: 1 normal, 2 warning,
    4 critical), which accounts for compression and purgeable memory that "available" misses."""
    try:
        out = subprocess.run(
            ["sysctl", "-n", "kern.memorystatus_vm_pressure_level"], capture_output=True, text=True, timeout=2, check=False
        ).stdout
        return _MACOS_LEVELS.get(int(out.strip()))
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _nvidia_smi_memory() -> tuple[int, int] | None:
    """(total, free) bytes of the first NVIDIA GPU."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        total, free = (int(v.strip()) * 1024 * 1024 for v in out.splitlines()[0].split(","))
        return total, free
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def gpu_memory_bytes() -> int | None:
    """Total memory of the first NVIDIA GPU (``nvidia-smi``), or None where there is none.

    On Apple Silicon the GPU shares the system memory, so the system total applies."""
    if shutil.which("nvidia-smi") is None:
        return None
    memory = _nvidia_smi_memory()
    return memory[0] if memory else None


def memory_budget_bytes(defaults: Defaults) -> int:
    """Bytes all resident models may take together: ``defaults.memory_budget_gb``, or by default
    75 % of the GPU's memory (NVIDIA) or of the system memory (Apple Silicon, CPU)."""
    if defaults.memory_budget_gb is not None:
        return int(defaults.memory_budget_gb * GB)
    total = gpu_memory_bytes() or psutil.virtual_memory().total
    return int(total * 0.75)
