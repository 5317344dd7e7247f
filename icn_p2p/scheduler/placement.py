"""Placement: feasibility filters, then rankers, then a decision that explains itself.

``place`` is a pure function of its inputs (time passed in). It keeps every
offer's outcome — the filter that excluded it, or its score with the
breakdown — so ``PlacementDecision.explain(did)`` can answer "why did X win
or lose?", and when nothing is feasible the decision says what the task is
waiting for.

Ties break by executor DID: among equal scores the lexicographically smallest
DID wins. Scores are rounded to 12 decimals first so that equal inputs summed
in different orders never split a tie by a rounding error.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from icn_p2p.core.decision import PlacementConstraints
from icn_p2p.core.task import ComputeTask
from icn_p2p.metrics import REGISTRY
from prometheus_client import Counter as PromCounter

from .feasibility import DEFAULT_FILTERS, Filter, PlacementContext
from .offer import Offer
from .ranking import DEFAULT_RANKERS, Component, Ranker
from .trust import TrustBook

log = logging.getLogger(__name__)

PLACEMENTS = PromCounter(
    "icn_placements", "Placement decisions, by outcome", ["outcome"], registry=REGISTRY
)
OFFERS_EXCLUDED = PromCounter(
    "icn_offers_excluded", "Offers excluded at placement, by filter", ["filter"], registry=REGISTRY
)

SCORE_DECIMALS = 12
DUPLICATE = "duplicate"


# Per-offer records are plain slotted dataclasses, read-only by convention (validated and serialised by
# pydantic as fields of PlacementDecision): a decision over 500 offers builds
# thousands of them, and model construction would dominate the placement time.


@dataclass(slots=True)
class Exclusion:
    filter: str
    reason: str


@dataclass(slots=True)
class OfferResult:
    """One offer's outcome: excluded (by which filter, why) or scored (with its breakdown)."""

    did: str
    feasible: bool
    excluded_by: Exclusion | None = None
    score: float | None = None
    breakdown: dict[str, Component] = field(default_factory=dict)
    rank: int | None = None  # 0 = winner, among feasible offers


class PlacementDecision(BaseModel):
    model_config = ConfigDict(frozen=True)

    task_id: str
    decided_at_ms: int
    min_trust: float
    winner: str | None
    ranked: list[str] = Field(default_factory=list)  # feasible DIDs, best first: the fallback order
    results: list[OfferResult] = Field(default_factory=list)
    waiting_for: list[str] = Field(default_factory=list)  # when nothing is feasible

    @property
    def placed(self) -> bool:
        return self.winner is not None

    def result(self, did: str) -> OfferResult | None:
        """The offer of ``did`` that counted (a superseded duplicate only if nothing else)."""
        found = None
        for r in self.results:
            if r.did == did:
                if r.excluded_by is None or r.excluded_by.filter != DUPLICATE:
                    return r
                found = found or r
        return found

    def explain(self, did: str) -> str:
        """Why ``did`` won, lost, or was not considered, in one line a member can read."""
        r = self.result(did)
        if r is None:
            return f"{did} made no offer for task {self.task_id}"
        if not r.feasible:
            assert r.excluded_by is not None
            return f"{did} is infeasible ({r.excluded_by.filter}): {r.excluded_by.reason}"
        assert r.score is not None
        results = {x.did: x for x in self.results if x.feasible}
        if did == self.winner:
            if len(self.ranked) == 1:
                return f"{did} won with {r.score:.3f}, the only feasible offer; " + _parts(r)
            other = results[self.ranked[1]]
            assert other.score is not None
            if other.score == r.score:
                head = f"{did} won a tie at {r.score:.3f} with {other.did} by DID order"
            else:
                head = f"{did} won over {other.did}: {r.score:.3f} vs {other.score:.3f}"
            return head + _compare(r, other, ahead=True)
        w = results[self.winner]  # type: ignore[index]
        assert w.score is not None
        if w.score == r.score:
            head = f"{did} tied with {w.did} at {r.score:.3f} and lost by DID order"
        else:
            head = f"{did} lost to {w.did}: {r.score:.3f} vs {w.score:.3f}"
        return head + _compare(r, w, ahead=False)


def _fmt_inputs(c: Component) -> str:
    return ", ".join(f"{k} {_fmt(v)}" for k, v in c.inputs.items())


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if v is None:
        return "unknown"
    return str(v)


def _parts(r: OfferResult) -> str:
    return "; ".join(f"{n} {c.value:.3f}/{c.weight:.2f} ({_fmt_inputs(c)})" for n, c in r.breakdown.items())


def _compare(r: OfferResult, other: OfferResult, *, ahead: bool) -> str:
    """Components where ``r`` is ahead of (or behind) ``other``, largest gap first."""
    gaps = []
    for name, c in r.breakdown.items():
        o = other.breakdown.get(name)
        if o is None:
            continue
        d = c.value - o.value
        if (d > 1e-12) if ahead else (d < -1e-12):
            gaps.append((abs(d), name, c, o))
    if not gaps:
        return "; no component differs" if not ahead else "; equal components"
    gaps.sort(key=lambda g: (-g[0], g[1]))
    return "; " + "; ".join(
        f"{n} {c.value:.3f} vs {o.value:.3f} ({_fmt_inputs(c)} vs {_fmt_inputs(o)})" for _, n, c, o in gaps
    )


def evaluate(
    task: ComputeTask,
    constraints: PlacementConstraints,
    offer: Offer,
    ctx: PlacementContext,
    filters: Sequence[Filter] = DEFAULT_FILTERS,
) -> Exclusion | None:
    """The first filter that excludes ``offer``, or None when it is feasible."""
    for f in filters:
        reason = f(task, constraints, offer, ctx)
        if reason is not None:
            return Exclusion(filter=f.name, reason=reason)
    return None


def feasibility_check(
    task: ComputeTask,
    constraints: PlacementConstraints,
    *,
    trust: TrustBook,
    min_trust: float,
    now_ms: int,
    filters: Sequence[Filter] = DEFAULT_FILTERS,
) -> Callable[[Offer], bool]:
    """A predicate for ``OfferWindow``: does this offer count towards the wanted number?"""
    ctx = PlacementContext(trust=trust, min_trust=min_trust, now_ms=now_ms)
    return lambda offer: evaluate(task, constraints, offer, ctx, filters) is None


def score(task: ComputeTask, offer: Offer, ctx: PlacementContext, rankers: Sequence[Ranker] = DEFAULT_RANKERS):
    """(score, breakdown) of one offer; the score is the rounded sum, clamped to [0, 1]."""
    breakdown: dict[str, Component] = {}
    total = 0.0
    for rk in rankers:
        value, inputs = rk(task, offer, ctx)
        breakdown[rk.name] = Component(value=value, weight=rk.weight, inputs=inputs)
        total += value
    return round(min(1.0, max(0.0, total)), SCORE_DECIMALS), breakdown


def _dedupe(offers: Iterable[Offer]) -> tuple[list[Offer], list[Offer]]:
    """Keep each executor's latest offer (ties: the first seen); return (kept, superseded)."""
    latest: dict[str, Offer] = {}
    superseded: list[Offer] = []
    for o in offers:
        prev = latest.get(o.executor.did)
        if prev is None:
            latest[o.executor.did] = o
        elif o.offered_at_ms > prev.offered_at_ms:
            superseded.append(prev)
            latest[o.executor.did] = o
        else:
            superseded.append(o)
    return list(latest.values()), superseded


def _waiting_for(constraints: PlacementConstraints, excluded: list[OfferResult], total: int) -> list[str]:
    out = [f"constraints conflict: {c}" for c in constraints.conflicts]
    if total == 0:
        out.append("no offers yet")
        return out
    by_filter: dict[str, list[str]] = defaultdict(list)
    for r in excluded:
        assert r.excluded_by is not None
        by_filter[r.excluded_by.filter].append(r.excluded_by.reason)
    for name, reasons in sorted(by_filter.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        common = Counter(reasons).most_common(3)
        examples = "; ".join(f"{reason} (x{n})" if n > 1 else reason for reason, n in common)
        out.append(f"{len(reasons)} of {total} offers excluded by {name}: {examples}")
    return out


def place(
    task: ComputeTask,
    constraints: PlacementConstraints,
    offers: Iterable[Offer],
    *,
    trust: TrustBook,
    min_trust: float,
    now_ms: int,
    filters: Sequence[Filter] = DEFAULT_FILTERS,
    rankers: Sequence[Ranker] = DEFAULT_RANKERS,
) -> PlacementDecision:
    """Filter the offers, score the feasible ones, pick the best (ties: smallest DID)."""
    ctx = PlacementContext(trust=trust, min_trust=min_trust, now_ms=now_ms)
    kept, superseded = _dedupe(offers)
    scored: list[tuple[float, str, dict[str, Component]]] = []
    excluded: list[OfferResult] = []
    excluded_counts: Counter[str] = Counter()
    for o in kept:
        ex = evaluate(task, constraints, o, ctx, filters)
        if ex is not None:
            excluded.append(OfferResult(o.executor.did, False, ex))
            excluded_counts[ex.filter] += 1
            continue
        s, breakdown = score(task, o, ctx, rankers)
        scored.append((s, o.executor.did, breakdown))
    scored.sort(key=lambda t: (-t[0], t[1]))
    results = [
        OfferResult(did, True, None, s, b, i)
        for i, (s, did, b) in enumerate(scored)
    ]
    results.extend(excluded)
    for o in superseded:
        ex = Exclusion(filter=DUPLICATE, reason="superseded by a later offer from the same executor")
        results.append(OfferResult(o.executor.did, False, ex))
    winner = scored[0][1] if scored else None
    waiting = [] if winner else _waiting_for(constraints, excluded, len(kept))
    for name, n in excluded_counts.items():
        OFFERS_EXCLUDED.labels(name).inc(n)
    PLACEMENTS.labels("placed" if winner else "no_feasible").inc()
    if winner:
        log.debug("placement task=%s winner=%s score=%.3f feasible=%d offers=%d",
                  task.id, winner, scored[0][0], len(scored), len(kept))
    else:
        log.info("placement task=%s winner=none offers=%d waiting_for=%r", task.id, len(kept), waiting)
    return PlacementDecision.model_construct(
        task_id=task.id, decided_at_ms=now_ms, min_trust=min_trust, winner=winner,
        ranked=[did for _, did, _ in scored], results=results, waiting_for=waiting,
    )
