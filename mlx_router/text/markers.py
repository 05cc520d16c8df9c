"""Finding markup in streamed text: the first of several markers, and how much of a text's end
may still become one (and so must be held back until the next piece decides)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["find_first", "partial_suffix"]


def find_first(text: str, markers: Iterable[str]) -> tuple[int, str | None]:
    """The earliest of ``markers`` in ``text`` as ``(index, marker)`` (the longest one when
    several start there), or ``(-1, None)``."""
    best, found = -1, None
    for marker in markers:
        index = text.find(marker)
        if index >= 0 and (best < 0 or index < best or (index == best and len(marker) > len(found or ""))):
            best, found = index, marker
    return best, found


def partial_suffix(text: str, markers: Iterable[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of one of ``markers``."""
    best = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), best, -1):
            if marker.startswith(text[-size:]):
                best = size
                break
    return best
