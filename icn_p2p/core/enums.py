"""Ordered enumerations shared by every layer.

They serialise as the names ICN's serde used (``"Low"``, ``"Strict"``,
``"Commons"``) and compare by rank, so ``TaskPriority.HIGH > TaskPriority.NORMAL``.
"""

from __future__ import annotations

from enum import Enum
from functools import total_ordering


_RANKS: dict[type, dict[str, int]] = {}


@total_ordering
class _RankedEnum(str, Enum):
    """A string enum ordered by declaration order, not alphabetically."""

    @property
    def rank(self) -> int:
        ranks = _RANKS.get(type(self))
        if ranks is None:
            ranks = _RANKS[type(self)] = {m.value: i for i, m in enumerate(type(self))}
        return ranks[self.value]

    @classmethod
    def from_rank(cls, rank: int):
        members = list(cls)
        return members[max(0, min(rank, len(members) - 1))]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, type(self)):
            return NotImplemented
        return self.rank < other.rank

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, type(self)):
            return NotImplemented
        return self.rank > other.rank

    def __le__(self, other: object) -> bool:
        if not isinstance(other, type(self)):
            return NotImplemented
        return self.rank <= other.rank

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, type(self)):
            return NotImplemented
        return self.rank >= other.rank

    # The hash of the name (as before), computed in C: enum members are hashed on hot paths.
    __hash__ = str.__hash__

    def __str__(self) -> str:
        return self.value


class TaskPriority(_RankedEnum):
    """Low < Normal < High < Critical (ranks 0..3)."""

    LOW = "Low"
    NORMAL = "Normal"
    HIGH = "High"
    CRITICAL = "Critical"


class EnforcementMode(str, Enum):
    """What a policy does with a violation: reject, admit and record, or only count."""

    STRICT = "Strict"
    PERMISSIVE = "Permissive"
    MONITORING = "Monitoring"

    def __str__(self) -> str:
        return self.value


class ScopeLevel(_RankedEnum):
    """How far a task's effects reach: Local < Cell < Org < Federation < Commons."""

    LOCAL = "Local"
    CELL = "Cell"
    ORG = "Org"
    FEDERATION = "Federation"
    COMMONS = "Commons"
