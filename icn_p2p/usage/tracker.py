"""The seeds' UsageTracker on top of the replicated store, made idempotent.

Each recording is tied to an id (task id or credit reference) kept in the same
transaction as the counters, so a receipt, claim or release seen twice is
counted once. Who records what, so the mesh counts each thing once:

- ``record_execution``: the executor's node (its DID writes the entry). A call
  naming another executor records nothing: that node counts its own receipts.
  It counts the resources a run consumed; the *task* is counted complete once,
  by the submitter (``task_completed``), so a run whose executor vanished
  before answering costs its CPU but does not count as a second completion.
- ``task_claimed`` / ``task_released``: the node that claims a task is the node
  that releases it (at completion, failure or cancel). A release without a
  claim recorded here is ignored. The release is written to the claim's month,
  so a task running across a month boundary still counts as running.
- ``credit_earned``: once per ``ref_id``.

All methods are synchronous and commit before returning; call them from trio
through ``trio.to_thread.run_sync`` with a CapacityLimiter.
"""

from __future__ import annotations

import logging

from icn_p2p import metrics
from icn_p2p.core.clock import month_key
from icn_p2p.core.usage import MemberUsage

from .store import UsageStore

log = logging.getLogger(__name__)


def _count(name: str, value: int) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


class UsageTracker:
    """Records a node's usage observations and answers merged usage questions."""

    def __init__(self, store: UsageStore) -> None:
        self.store = store

    def _now(self, now_ms: int | None) -> int:
        return self.store.clock.now_ms() if now_ms is None else now_ms

    def record_execution(
        self, coop_id: str, member: str, task_id: str, cpu_ms: int, fuel: int,
        credits_spent: int = 0, executor_did: str | None = None, now_ms: int | None = None,
        *, count_task: bool = True,
    ) -> bool:
        """Count one run's resources (and the task, unless ``count_task`` is False);
        True when recorded now, False when already counted."""
        cpu_ms, fuel = _count("cpu_ms", cpu_ms), _count("fuel", fuel)
        credits_spent = _count("credits_spent", credits_spent)
        if executor_did is not None and executor_did != self.store.did:
            log.info("usage_receipt_skipped task=%s executor=%s reason=not_our_execution",
                     task_id, executor_did)
            return False
        now = self._now(now_ms)
        month = month_key(now)
        with self.store.batch():
            if not self.store.mark_processed(coop_id, "exec", task_id, month, now):
                log.debug("usage_receipt_duplicate task=%s", task_id)
                return False
            self.store.increment(
                coop_id, member, month=month, cpu_ms=cpu_ms, fuel=fuel, tasks_completed=int(count_task),
                credits_spent=credits_spent,
            )
        label = metrics.member_label(member)
        if count_task:
            metrics.MEMBER_TASKS_COMPLETED.labels(coop_id, label).inc()
        if credits_spent:
            metrics.MEMBER_CREDITS_SPENT.labels(coop_id, label).inc(credits_spent)
        self._gauge(coop_id, member, now)
        return True

    def task_completed(self, coop_id: str, member: str, task_id: str, now_ms: int | None = None) -> bool:
        """Count a task as completed, once, on the node that saw its verified result."""
        now = self._now(now_ms)
        month = month_key(now)
        with self.store.batch():
            if not self.store.mark_processed(coop_id, "done", task_id, month, now):
                return False
            self.store.increment(coop_id, member, month=month, tasks_completed=1)
        metrics.MEMBER_TASKS_COMPLETED.labels(coop_id, metrics.member_label(member)).inc()
        return True

    def task_claimed(self, coop_id: str, member: str, task_id: str, now_ms: int | None = None) -> bool:
        now = self._now(now_ms)
        month = month_key(now)
        with self.store.batch():
            if not self.store.mark_processed(coop_id, "claim", task_id, month, now):
                return False
            self.store.increment(coop_id, member, month=month, claimed=1)
        return True

    def task_released(self, coop_id: str, member: str, task_id: str, now_ms: int | None = None) -> bool:
        now = self._now(now_ms)
        with self.store.batch():
            month = self.store.processed_month(coop_id, "claim", task_id)
            if month is None:
                log.info("usage_release_without_claim task=%s coop=%s", task_id, coop_id)
                return False
            if not self.store.mark_processed(coop_id, "release", task_id, month, now):
                return False
            self.store.increment(coop_id, member, month=month, released=1)
        return True

    def credit_earned(
        self, coop_id: str, member: str, amount: int, ref_id: str, now_ms: int | None = None,
    ) -> bool:
        amount = _count("amount", amount)
        now = self._now(now_ms)
        month = month_key(now)
        with self.store.batch():
            if not self.store.mark_processed(coop_id, "earn", ref_id, month, now):
                return False
            self.store.increment(coop_id, member, month=month, credits_earned=amount)
        return True

    def get_usage(self, coop_id: str, member: str, now_ms: int | None = None) -> MemberUsage:
        """Merged across every writer, current UTC month."""
        usage = self.store.member_usage(coop_id, member, self._now(now_ms))
        metrics.MEMBER_CPU_HOURS.labels(coop_id, metrics.member_label(member)).set(
            usage.cpu_hours_this_month
        )
        return usage

    def list_coop_usage(self, coop_id: str, now_ms: int | None = None) -> list[MemberUsage]:
        now = self._now(now_ms)
        return [self.store.member_usage(coop_id, m, now) for m in self.store.members(coop_id, now)]

    def _gauge(self, coop_id: str, member: str, now: int) -> None:
        usage = self.store.member_usage(coop_id, member, now)
        metrics.MEMBER_CPU_HOURS.labels(coop_id, metrics.member_label(member)).set(
            usage.cpu_hours_this_month
        )

