"""Executors against a task's placement constraints: hard filters, with reasons.

The scheduler's feasibility pipeline calls ``check_executor`` for each
executor that offers; an empty list means it passes. Every reason is kept, so a
user can see all that rules an executor out, not only the first thing.
"""

from __future__ import annotations

from typing import Iterable

from pydantic import BaseModel, ConfigDict, Field

from icn_p2p.core.decision import PlacementConstraints
from icn_p2p.core.task import ExecutorInfo
from icn_p2p.core.versions import version_at_least

__all__ = ["FilterResult", "check_executor", "filter_executors"]


def check_executor(constraints: PlacementConstraints, executor: ExecutorInfo) -> list[str]:
    """The reasons ``constraints`` exclude ``executor`` (empty: it is feasible)."""
    reasons: list[str] = []
    for conflict in constraints.conflicts:
        reasons.append(f"constraints conflict: {conflict}")
    region = constraints.required_region
    if region is not None and executor.region != region:
        if executor.region is None:
            reasons.append(f"advertises no region; {region} is required")
        else:
            reasons.append(f"region {executor.region} is not the required {region}")
    if constraints.allowed_executors and executor.did not in constraints.allowed_executors:
        reasons.append("not in the whitelist")
    if executor.did in constraints.forbidden_executors:
        reasons.append("blacklisted")
    for req in constraints.required_capabilities:
        have = executor.capabilities.get(req.capability)
        need = f" >= {req.min_version}" if req.min_version is not None else ""
        if have is None:
            reasons.append(f"lacks capability {req.capability}{need}")
        elif not version_at_least(have, req.min_version):
            reasons.append(f"lacks capability {req.capability}{need} (has {have})")
    return reasons


class FilterResult(BaseModel):
    """Executors that pass, and why each of the others does not (DID -> reasons)."""

    model_config = ConfigDict(frozen=True)

    feasible: list[ExecutorInfo] = Field(default_factory=list)
    excluded: dict[str, list[str]] = Field(default_factory=dict)


def filter_executors(
    constraints: PlacementConstraints, executors: Iterable[ExecutorInfo]
) -> FilterResult:
    """Split ``executors`` into the feasible ones (order kept) and the excluded ones."""
    feasible: list[ExecutorInfo] = []
    excluded: dict[str, list[str]] = {}
    for executor in executors:
        reasons = check_executor(constraints, executor)
        if reasons:
            excluded.setdefault(executor.did, []).extend(reasons)
        else:
            feasible.append(executor)
    return FilterResult.model_construct(feasible=feasible, excluded=excluded)
