"""Rankers: the placement score, one component each (ICN's weights).

Each ranker has a ``name`` and a ``weight`` and returns its component in
``[0, weight]`` together with the raw inputs it used, so a decision can show
why an executor scored as it did. The default weights sum to 1, so the score
is in ``[0, 1]``:

=============  ======  =================================================
component      weight  value
=============  ======  =================================================
trust          0.25    effective trust
capacity       0.20    min(cpu_free, memory_free)
queue          0.15    1 - min(queue_depth / 10, 1)
rtt            0.15    1 - min(rtt_ms / 500, 1); 0 when RTT is unknown
data_locality  0.15    fraction of the task's input blobs the executor holds
hints          0.10    min(0.05 [preferred region] + 0.10 [preferred executor], 0.10)
=============  ======  =================================================

A task with no input blobs gives every executor the full data-locality
component: there is nothing to fetch, no executor is closer to the data, and
the score keeps its full [0, 1] range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from icn_p2p.core.task import ComputeTask

from .feasibility import PlacementContext
from .offer import Offer

QUEUE_SATURATION = 10
RTT_SATURATION_MS = 500.0
REGION_HINT_BONUS = 0.05
EXECUTOR_HINT_BONUS = 0.10


@dataclass(slots=True)
class Component:
    """One ranker's part of a score: its value, its weight and the raw inputs.

    A plain dataclass (pydantic validates and serialises it inside a decision):
    placement builds one per ranker per offer, and a model here costs more than
    the ranking itself.
    """

    value: float
    weight: float
    inputs: dict[str, Any]


class Ranker(Protocol):
    name: str
    weight: float

    def __call__(self, task: ComputeTask, offer: Offer, ctx: PlacementContext) -> tuple[float, dict[str, Any]]: ...


class TrustRanker:
    name = "trust"

    def __init__(self, weight: float = 0.25) -> None:
        self.weight = weight

    def __call__(self, task, offer, ctx):
        t = ctx.effective_trust(offer)
        return self.weight * t, {"trust": t, "claimed": offer.executor.trust}


class CapacityRanker:
    name = "capacity"

    def __init__(self, weight: float = 0.20) -> None:
        self.weight = weight

    def __call__(self, task, offer, ctx):
        cap = offer.executor.capacity
        return self.weight * min(cap.cpu_free, cap.memory_free), {
            "cpu_free": cap.cpu_free,
            "memory_free": cap.memory_free,
        }


class QueueRanker:
    name = "queue"

    def __init__(self, weight: float = 0.15) -> None:
        self.weight = weight

    def __call__(self, task, offer, ctx):
        q = offer.executor.queue_depth
        return self.weight * (1.0 - min(q / QUEUE_SATURATION, 1.0)), {"queue_depth": q}


class RttRanker:
    name = "rtt"

    def __init__(self, weight: float = 0.15) -> None:
        self.weight = weight

    def __call__(self, task, offer, ctx):
        rtt = offer.rtt_ms
        if rtt is None:
            return 0.0, {"rtt_ms": None}
        return self.weight * (1.0 - min(rtt / RTT_SATURATION_MS, 1.0)), {"rtt_ms": rtt}


class DataLocalityRanker:
    name = "data_locality"

    def __init__(self, weight: float = 0.15) -> None:
        self.weight = weight

    def __call__(self, task, offer, ctx):
        wanted = set(task.input_blobs)
        if not wanted:
            return self.weight, {"blobs_held": 0, "blobs_wanted": 0}
        held = len(wanted.intersection(offer.executor.blobs))
        return self.weight * held / len(wanted), {"blobs_held": held, "blobs_wanted": len(wanted)}


class HintsRanker:
    name = "hints"

    def __init__(self, weight: float = 0.10) -> None:
        self.weight = weight

    def __call__(self, task, offer, ctx):
        hints = task.locality_hints
        region = hints.preferred_region is not None and offer.executor.region == hints.preferred_region
        preferred = offer.executor.did in hints.preferred_executors
        raw = REGION_HINT_BONUS * region + EXECUTOR_HINT_BONUS * preferred
        # Scaled so a custom weight keeps the same proportions; at 0.10 this is exactly ICN's.
        value = min(raw, EXECUTOR_HINT_BONUS) * (self.weight / EXECUTOR_HINT_BONUS)
        return value, {"preferred_region": region, "preferred_executor": preferred}


def default_rankers() -> tuple[Ranker, ...]:
    return (TrustRanker(), CapacityRanker(), QueueRanker(), RttRanker(), DataLocalityRanker(), HintsRanker())


DEFAULT_RANKERS: tuple[Ranker, ...] = default_rankers()
