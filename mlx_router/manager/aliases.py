"""Model aliases: other names for served models (``aliases`` in config.json).

Agent clients ask for their own model names: Claude Code for ``claude-sonnet-…`` and
``claude-haiku-…`` (its main and background work), Codex for ``gpt-…``. An alias is an exact name
or a glob pattern (``*``, ``?``, ``[…]``, matched case-sensitively) mapped to a served model id.
A served model id always wins over an alias; exact aliases win over patterns; patterns are tried
in the order the file lists them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from mlx_router.config.settings import ConfigError

__all__ = ["Aliases", "is_pattern"]

_GLOB = frozenset("*?[")


def is_pattern(name: str) -> bool:
    """Whether an alias key is a glob pattern rather than an exact name."""
    return any(c in _GLOB for c in name)


@dataclass(frozen=True)
class Aliases:
    """The alias table, split once into exact names and ordered patterns."""

    exact: Mapping[str, str]
    patterns: tuple[tuple[str, str], ...]

    @classmethod
    def from_config(cls, aliases: Mapping[str, str]) -> Aliases:
        return cls(
            {name: target for name, target in aliases.items() if not is_pattern(name)},
            tuple((name, target) for name, target in aliases.items() if is_pattern(name)),
        )

    def match(self, name: str) -> tuple[str, str] | None:
        """(the alias key that matched, its target) for a requested name, or None."""
        target = self.exact.get(name)
        if target is not None:
            return name, target
        return next(((key, target) for key, target in self.patterns if fnmatchcase(name, key)), None)

    def names_for(self, target: str) -> list[str]:
        """Every alias key (names and patterns) that points at ``target``, in file order."""
        return [name for name, to in (*self.exact.items(), *self.patterns) if to == target]

    def check(self, served: Collection[str]) -> None:
        """Every target must be a served model id, and no exact alias may shadow one (it would
        never be used). Raises :class:`ConfigError` naming the key."""
        for name, target in (*self.exact.items(), *self.patterns):
            if target not in served:
                raise ConfigError(
                    f"aliases.{name}: the target {target!r} is not a served model. Known models: "
                    f"{', '.join(sorted(served)) or 'none'}. Point the alias at one of them."
                )
            if name in served:
                raise ConfigError(
                    f"aliases.{name}: {name!r} is already a model id, so the alias would never be used. "
                    "Remove the alias or rename it."
                )
