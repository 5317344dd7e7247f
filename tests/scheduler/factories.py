"""Builders for tasks, executors and offers used across the scheduler tests."""

from __future__ import annotations

from icn_p2p.core.task import Capacity, ComputeTask, ExecutorInfo, LocalityHints, ResourceProfile
from icn_p2p.scheduler.offer import Offer


def task(task_id: str = "t1", **kw) -> ComputeTask:
    hints = kw.pop("hints", None)
    profile = kw.pop("profile", None)
    if hints is not None:
        kw["locality_hints"] = LocalityHints(**hints)
    if profile is not None:
        kw["resource_profile"] = ResourceProfile(**profile)
    return ComputeTask(id=task_id, coop_id="coop", submitter="did:key:member", **kw)


def executor(did: str, **kw) -> ExecutorInfo:
    cap = kw.pop("capacity", None)
    if cap is not None:
        kw["capacity"] = Capacity(**cap)
    return ExecutorInfo(did=did, **kw)


def offer(did: str, task_id: str = "t1", rtt_ms: float | None = None, offered_at_ms: int = 0, **kw) -> Offer:
    return Offer(task_id=task_id, executor=executor(did, **kw), rtt_ms=rtt_ms, offered_at_ms=offered_at_ms)
