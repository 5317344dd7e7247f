"""Feasibility filters: hard reasons an offer cannot win.

Each filter is a small object with a ``name`` and a call
``(task, constraints, offer, ctx) -> str | None`` returning the reason that
excludes the offer, or ``None`` when it passes. Placement runs them in order
and records the first that excludes; they are tested one by one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from icn_p2p.core.decision import PlacementConstraints
from icn_p2p.core.task import ComputeTask
from icn_p2p.policy.filtering import check_executor

from .offer import Offer
from .trust import TrustBook

# Free capacity is a product of floats; a task asking for exactly what is free fits.
_EPS = 1e-9


@dataclass
class PlacementContext:
    """What a placement run knows besides the task and the offer: trust, minimum, time."""

    trust: TrustBook
    min_trust: float = 0.0
    now_ms: int = 0
    _trust_cache: dict[str, float] = field(default_factory=dict, repr=False)

    def effective_trust(self, offer: Offer) -> float:
        did = offer.executor.did
        t = self._trust_cache.get(did)
        if t is None:
            t = self.trust.effective(did, offer.executor.trust, self.now_ms)
            self._trust_cache[did] = t
        return t


class Filter(Protocol):
    name: str

    def __call__(
        self, task: ComputeTask, constraints: PlacementConstraints, offer: Offer, ctx: PlacementContext
    ) -> str | None: ...


class TaskMatchFilter:
    """An offer for another task (a stale or misrouted message) is not an offer for this one."""

    name = "task"

    def __call__(self, task, constraints, offer, ctx):
        if offer.task_id != task.id:
            return f"offer is for task {offer.task_id}, not {task.id}"
        return None


class ConstraintFilter:
    """The coop policy's hard constraints (region, capabilities, executor lists)."""

    name = "constraints"

    def __call__(self, task, constraints, offer, ctx):
        reasons = check_executor(constraints, offer.executor)
        return "; ".join(reasons) if reasons else None


class MinTrustFilter:
    """Effective trust (prior blended with observed outcomes) must reach the minimum."""

    name = "min_trust"

    def __call__(self, task, constraints, offer, ctx):
        t = ctx.effective_trust(offer)
        if t < ctx.min_trust:
            return f"trust {t:.3f} is below the minimum {ctx.min_trust:.3f}"
        return None


class FitsFilter:
    """The executor's cores and memory must cover the task's profile.

    This asks whether the task fits the machine at all. How busy the machine
    is right now (its free share and queue) is the rankers' business: an
    executor queues claimed work, so a busy one is a worse choice, not an
    impossible one.
    """

    name = "fits"

    def __call__(self, task, constraints, offer, ctx):
        cap = offer.executor.capacity
        need = task.resource_profile
        short = []
        if cap.cpu_cores + _EPS < need.cpu_cores:
            short.append(f"{cap.cpu_cores:.2f} CPU cores < {need.cpu_cores:g} needed")
        if cap.memory_mb + _EPS < need.memory_mb:
            short.append(f"{cap.memory_mb} MB memory < {need.memory_mb} MB needed")
        return "; ".join(short) if short else None


class AvoidFilter:
    """An executor the task's locality hints avoid is infeasible, not merely ranked low."""

    name = "avoid"

    def __call__(self, task, constraints, offer, ctx):
        if offer.executor.did in task.locality_hints.avoid_executors:
            return "the task's locality hints avoid this executor"
        return None


class DeadlineFilter:
    """A task whose deadline passes before this executor could even hear the claim.

    ``deadline_ms`` is absolute (epoch ms). The earliest an executor can start
    is ``now + rtt`` (unknown RTT counts as 0): if that is at or past the
    deadline, the offer is useless. Run times are not known before running,
    so no further estimate is made.
    """

    name = "deadline"

    def __call__(self, task, constraints, offer, ctx):
        if task.deadline_ms is None:
            return None
        start = ctx.now_ms + (offer.rtt_ms or 0.0)
        if start >= task.deadline_ms:
            return f"earliest start {start:.0f} ms is not before the task deadline {task.deadline_ms} ms"
        return None


DEFAULT_FILTERS: tuple[Filter, ...] = (
    TaskMatchFilter(),
    ConstraintFilter(),
    AvoidFilter(),
    MinTrustFilter(),
    FitsFilter(),
    DeadlineFilter(),
)
