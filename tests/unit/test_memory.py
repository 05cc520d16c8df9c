"""The pressure rule, as a table."""

from __future__ import annotations

import pytest

from mlx_router.config.settings import Defaults
from mlx_router.manager.memory import ResourceMonitor, pressure_level

DEFAULTS = Defaults(memory_threshold_gb=2.0, swap_high_percent=90.0, swap_critical_percent=99.0)


@pytest.mark.parametrize(
    ("available_gb", "swap_percent", "psi", "level"),
    [
        (64.0, 0.0, None, "normal"),
        (64.0, 100.0, None, "normal"),  # swap alone never raises the level (macOS keeps swap around)
        (5.0, 95.0, 0.0, "normal"),
        (3.9, 0.0, None, "moderate"),
        (8.0, 0.0, 25.0, "moderate"),  # PSI memory stalls
        (3.5, 95.0, None, "high"),
        (1.9, 0.0, None, "high"),
        (1.5, 99.5, None, "critical"),
        (0.9, 0.0, None, "critical"),
    ],
)
def test_pressure_levels(available_gb: float, swap_percent: float, psi: float | None, level: str) -> None:
    assert pressure_level(available_gb, swap_percent, psi, DEFAULTS) == level


def test_snapshot_reads_this_machine() -> None:
    snap = ResourceMonitor(DEFAULTS).snapshot()
    assert snap.total_bytes > 0 and 0 < snap.available_bytes <= snap.total_bytes
    assert snap.level in ("normal", "moderate", "high", "critical")
    assert set(snap.to_dict()) >= {"total_gb", "available_gb", "pressure", "swap_percent"}


def test_gpu_memory_raises_the_level_and_is_read_at_most_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlx_router.manager import memory

    reads: list[int] = []

    def fake_smi() -> tuple[int, int]:
        reads.append(1)
        return 80 * 1024**3, int(1.5 * 1024**3)  # 1.5 GB free on the GPU: below the 2 GB threshold

    monkeypatch.setattr(memory, "_nvidia_smi_memory", fake_smi)
    monitor = ResourceMonitor(DEFAULTS)
    monitor._has_gpu = True
    first = monitor.snapshot()
    assert first.level in ("high", "critical")  # the GPU's level wins over an idle system's
    assert first.to_dict()["gpu_free_gb"] == 1.5
    monitor.snapshot()
    assert len(reads) == 1  # cached for READ_INTERVAL seconds


def test_no_gpu_means_system_memory_only() -> None:
    monitor = ResourceMonitor(DEFAULTS)
    monitor._has_gpu = False
    assert "gpu_free_gb" not in monitor.snapshot().to_dict()


def test_macos_kernel_pressure_level_raises_the_level(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlx_router.manager import memory

    monkeypatch.setattr(memory.sys, "platform", "darwin")
    monkeypatch.setattr(memory, "_macos_pressure_level", lambda: "critical")
    monitor = ResourceMonitor(DEFAULTS)
    monitor._has_gpu = False
    assert monitor.snapshot().level == "critical"
    monkeypatch.setattr(memory, "_macos_pressure_level", lambda: "normal")
    assert monitor.snapshot().level == "critical"  # the sysctl reading is reused for READ_INTERVAL
    fresh = ResourceMonitor(DEFAULTS)
    fresh._has_gpu = False
    assert fresh.snapshot().level != "critical" or memory.psutil.virtual_memory().available < 1024**3
