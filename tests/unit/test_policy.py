"""The eviction policy, as a table."""

from __future__ import annotations

import pytest

from mlx_router.manager.policy import Decision, Resident, plan_eviction

GB = 1 << 30


def r(model_id: str, gb: float, last_used: float, *, in_flight: int = 0, pinned: bool = False, kept: bool = False) -> Resident:
    return Resident(model_id, int(gb * GB), last_used, in_flight, pinned, kept)


CASES = [
    # (name, target GB, resident, budget GB, max resident, expected)
    ("empty fits", 4, [], 16, 2, Decision((), True)),
    ("room left: nothing evicted", 4, [r("a", 4, 1)], 16, 2, Decision((), True)),
    ("slot cap: LRU goes", 4, [r("a", 4, 1), r("b", 4, 2)], 64, 2, Decision(("a",), True)),
    ("memory: LRU first, just enough", 6, [r("a", 4, 3), r("b", 4, 1), r("c", 4, 2)], 16, 9, Decision(("b",), True)),
    ("memory: several go, oldest first", 12, [r("a", 4, 3), r("b", 4, 1), r("c", 4, 2)], 16, 9, Decision(("b", "c"), True)),
    ("busy model is skipped", 6, [r("a", 4, 1, in_flight=2), r("b", 4, 2), r("c", 4, 3)], 12, 9, Decision(("b", "c"), True)),
    ("pinned model is skipped", 6, [r("a", 4, 1, pinned=True), r("b", 4, 2), r("c", 4, 3)], 14, 9, Decision(("b",), True)),
    ("cannot fit: nothing evicted", 10, [r("a", 4, 1, in_flight=1), r("b", 4, 2, pinned=True)], 16, 9, Decision((), False, "memory")),
    ("larger than the whole budget", 40, [r("a", 4, 1)], 32, 9, Decision((), False, "memory")),
    ("all slots busy", 1, [r("a", 1, 1, in_flight=1), r("b", 1, 2, pinned=True)], 64, 2, Decision((), False, "slots")),
    ("exactly at the budget fits", 8, [r("a", 8, 1)], 16, 2, Decision((), True)),
    ("no cap: the budget alone decides", 1, [r(m, 1, i) for i, m in enumerate("abcdefghij")], 16, None, Decision((), True)),
    ("no cap: memory still evicts", 4, [r("a", 4, 1), r("b", 4, 2)], 8, None, Decision(("a",), True)),
    ("kept model goes after the others", 4, [r("a", 4, 1, kept=True), r("b", 4, 2), r("c", 4, 3)], 12, None, Decision(("b",), True)),
    ("kept model goes when nothing else can", 6, [r("a", 4, 1, kept=True), r("b", 4, 2, in_flight=1)], 10, None, Decision(("a",), True)),
    ("kept but busy stays", 6, [r("a", 4, 1, kept=True, in_flight=1)], 8, None, Decision((), False, "memory")),
]


@pytest.mark.parametrize(("target", "resident", "budget", "slots", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan(target: float, resident: list[Resident], budget: float, slots: int | None, expected: Decision) -> None:
    assert plan_eviction(int(target * GB), resident, budget_bytes=int(budget * GB), max_resident=slots) == expected
