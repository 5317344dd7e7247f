"""Tasks across the mesh: admission, announcement, offers, placement, execution, settlement.

Submitter side (the node a member submits on):

1. **Admission** with the coop's current policy and the merged usage view.
   A rejection is final and carries every violation back to the submitter.
   Admission takes a concurrency slot for the member (``task_claimed``) and,
   for Commons-scoped tasks, a durable credit reservation.
2. **Announcement** with the adjusted priority, the placement constraints and
   the pinned policy hash; tasks submitted while an announcement is in flight
   share the next message. It goes on ``icn/compute/1`` (gossip, the whole
   mesh) unless at least ``want_offers`` connected executors offered for the
   coop lately: then straight to them on direct streams, one hop each,
   instead of every node relaying it to every other. Gossip still carries
   one announcement per coop every ``announce_refresh_ms`` (so executors that
   never offered hear of tasks) and every task announced again after silence.
3. **Offers** arrive on direct streams (``/icn/task/1``): one hop, no gossip
   fan-out, nobody else needs them. The offer window closes when enough
   feasible offers arrived or after ``offer_window_ms``.
4. **Placement** ranks the offers (RTT from our own pings, trust from config
   blended with each executor's observed record, queue depth plus the claims
   this node sent since the offer was made) and keeps the breakdown.
5. **Claim**: the module travels only to the winner, on a direct stream that
   stays open until the result. A refused claim falls through to the next
   ranked executor; an executor that vanishes or misses its deadline is
   excluded and the task is placed again (at most ``max_attempts`` times).
   With no feasible executor the task waits (re-announced with backoff) until
   its deadline and says what it waits for.
6. **Settlement**: a verified receipt completes the task; the credit
   reservation is settled from the receipt's fuel and the spend recorded in
   the usage CRDT; the concurrency slot is released at any final state. The
   executor's signed usage entry comes with the result and is merged in the
   same usage transaction that closes the books, so the submitter never frees
   a member's slot without counting the run's CPU. A task's intermediate records
   are written behind it in batches (:mod:`.record_writer`); the final one
   commits with its books, before the task is reported finished. Admissions,
   closings and an executor's records of its runs each share worker-thread
   calls among the tasks that wait (:mod:`.batcher`).

Executor side: announcements that pass our constraints get an offer; a claim
is accepted once per task, run in the WebAssembly sandbox, and answered with
the result and a signed receipt (a run that ends within ``accept_grace_ms``
sends the result alone, which also says it was accepted). The executor records the execution in its
own usage entry (CPU, fuel) and the credits it earned, and sends that entry with the result.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio
from pydantic import ValidationError

from icn_p2p import metrics
from icn_p2p.core.clock import month_key
from icn_p2p.core.decision import PlacementConstraints
from icn_p2p.core.enums import ScopeLevel, TaskPriority
from icn_p2p.core.receipt import Outcome, Receipt
from icn_p2p.core.task import Capacity, ComputeTask, ExecutorInfo
from icn_p2p.executor import ExecutionRequest, ExecutionResult, Executor, ExecutorQueue, verify_receipt
from icn_p2p.executor.queue import QueueFull
from icn_p2p.net.direct import Conversation, ConversationError
from icn_p2p.net.gossip import TOPIC_COMPUTE, Delivery
from icn_p2p.policy.admission import evaluate, explain, record_decision_metrics
from icn_p2p.policy.filtering import check_executor
from icn_p2p.scheduler import (
    CreditLedger,
    CreditRate,
    InsufficientCredits,
    Offer,
    OfferWindow,
    PlacementDecision,
    TrustBook,
    actual_cost,
    estimate_cost,
    feasibility_check,
    place,
)
from icn_p2p.usage.crdt import SignedUsageEntry, UsageRejection
from icn_p2p.usage.tracker import UsageTracker

from .batcher import Batcher
from .config import ComputeSettings
from .lifecycle import TaskRecord, TaskState
from .record_writer import RecordWriter
from .task_store import TaskStore

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger(__name__)

ANNOUNCE = "compute.announce"
OFFER = "compute.offer"
CLAIM = "compute.claim"
ACCEPT = "compute.accept"
REFUSE = "compute.refuse"
RESULT = "compute.result"
CANCEL = "compute.cancel"
PROBE = "compute.probe"
PROGRESS = "compute.progress"

#: How long an executor that offered for a coop stays among those a
#: submitter announces to directly (while it stays connected).
OFFERER_MEMORY_MS = 600_000

TASKS_BY_STATE = metrics.Counter(
    "icn_tasks_transitions", "Task lifecycle transitions on this node, by state entered",
    ["state"], registry=metrics.REGISTRY,
)
PLACEMENT_SECONDS = metrics.Histogram(
    "icn_placement_seconds", "From announcement to a placement decision",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=metrics.REGISTRY,
)
TASK_LATENCY_SECONDS = metrics.Histogram(
    "icn_task_latency_seconds", "From submission to a final state, by outcome",
    ["state"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=metrics.REGISTRY,
)
OFFERS = metrics.Counter(
    "icn_offers", "Offers made (executor side) and received (submitter side)",
    ["direction"], registry=metrics.REGISTRY,
)
ANNOUNCEMENTS = metrics.Counter(
    "icn_announcements", "Announcement messages sent, by path (gossip, or direct to recent offerers)",
    ["path"], registry=metrics.REGISTRY,
)
CLAIMS = metrics.Counter(
    "icn_claims", "Claims handled on the executor side, by outcome", ["outcome"], registry=metrics.REGISTRY,
)


class SubmitError(Exception):
    """A submission that cannot be taken at all (not a policy rejection)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class _Pending:
    """A task this node submitted and is still placing or running."""

    task: ComputeTask
    module: bytes
    constraints: PlacementConstraints
    adjusted: TaskPriority
    deadline_ms: int
    submitted_at: float
    offers_send: trio.MemorySendChannel | None = None
    offers_recv: trio.MemoryReceiveChannel | None = None
    offer_arrived: trio.Event = field(default_factory=trio.Event)
    cancel: trio.CancelScope | None = None
    cancelled: bool = False
    executor_peer: Any = None
    done: trio.Event = field(default_factory=trio.Event)


@dataclass
class _ClaimWaiter:
    """The answers an executor sends for one claim, in order."""

    executor: str
    task_id: str
    send: trio.MemorySendChannel = field(init=False)
    receive: trio.MemoryReceiveChannel = field(init=False)

    def __post_init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel(16)


@dataclass
class _Running:
    """A task this node accepted to execute."""

    submitter: str
    handle: Any = None
    cancelled: bool = False


def module_hash(module: bytes) -> str:
    return hashlib.sha256(module).hexdigest()


MAX_BATCH = 64


def _announce_schema(env, topic: str):
    """``{submitter_node, submitter_addrs, tasks: [{task, constraints, ...}, ...]}``, signed by the submitter."""
    p = env.payload
    if not isinstance(p, dict) or not isinstance(p.get("submitter_node"), str):
        return "bad_schema"
    if p["submitter_node"] != env.signer:
        return "bad_schema"
    tasks = p.get("tasks")
    if not isinstance(tasks, list) or not 1 <= len(tasks) <= MAX_BATCH:
        return "bad_schema"
    if not all(isinstance(t, dict) and isinstance(t.get("task"), dict) for t in tasks):
        return "bad_schema"
    return None


class ComputeService:
    """Both sides of the task protocol for one node (see the module docstring)."""

    def __init__(self, node: "Node", settings: ComputeSettings | None = None) -> None:
        self.node = node
        self.settings = settings or ComputeSettings()
        self.roles = set(node.config.roles)
        self.trust = TrustBook(configured=dict(node.config.trust.peers))
        self.rate = CreditRate(fuel_per_credit=self.settings.fuel_per_credit)
        self.queue = ExecutorQueue(self.settings.concurrency, max_queued=self.settings.max_queued)
        self.executor = Executor(node.key, self.queue,
                                 memory_limit_bytes=self.settings.memory_limit_mb * 1024 * 1024,
                                 wall_ms=self.settings.wall_ms, clock=node.clock)
        self.tracker: UsageTracker | None = None
        self.tasks: TaskStore | None = None
        self.writer: RecordWriter | None = None
        self.credits: CreditLedger | None = None
        self.direct = node.direct
        self._pending: dict[str, _Pending] = {}
        self._running: dict[str, _Running] = {}
        self._published: dict[str, int] = {}
        self._dirty_coops: set[str] = set()
        self._announcements: list[tuple[dict[str, Any], bool]] = []  # (item, to the whole mesh)
        self._offerers: dict[str, dict[str, int]] = {}  # coop -> executor -> last offer (ms)
        self._gossiped_at: dict[str, float] = {}  # coop -> trio time of its last gossiped announcement
        self._announce_ready = trio.Event()
        self._announce_answered = trio.Event()  # an offer came back for the message in flight
        self._in_flight: set[str] = set()  # the tasks of the announcement message in flight
        self._usage_dirty = trio.Event()
        self._claims: dict[str, _ClaimWaiter] = {}
        self._claimed_at: dict[str, dict[str, int]] = {}  # executor -> task -> claim sent (ms)
        # admissions, closings and run records of many tasks share worker-thread calls (see .batcher)
        self._admitter = Batcher(self._admit_many, node.blocking)
        self._finisher = Batcher(self._finish_many, node.blocking)
        self._recorder = Batcher(self._record_many, node.blocking)
        self._records: dict[str, TaskRecord] = {}
        self._admitting: set[str] = set()
        self._decisions: dict[str, PlacementDecision] = {}
        self.events: list[dict[str, Any]] = []
        self._nursery: trio.Nursery | None = None
        node.register_type(ANNOUNCE, TOPIC_COMPUTE, _announce_schema)
        node.handle(ANNOUNCE, self._on_announce)
        self.direct.handle(ANNOUNCE, self._on_direct_announce)
        self.direct.handle(OFFER, self._on_offer)
        self.direct.handle(CLAIM, self._on_claim)
        self.direct.handle(CANCEL, self._on_cancel)
        self.direct.handle(PROBE, self._on_probe)
        for answer in (ACCEPT, REFUSE, RESULT, PROGRESS):
            self.direct.handle(answer, self._on_answer)

    # --- lifecycle -----------------------------------------------------------------

    def open_stores(self, data_dir) -> None:
        """Blocking: open the task and credit stores (called in a worker thread)."""
        self.tracker = UsageTracker(self.node.usage_store)
        self.tasks = TaskStore(data_dir / "tasks.db")
        self.writer = RecordWriter(self.tasks, self.node.blocking)
        self.credits = CreditLedger(data_dir / "credits.db", clock=self.node.clock)

    def close_stores(self) -> None:
        if self.writer is not None:
            try:
                self.writer.drain()
            except Exception as exc:  # pragma: no cover - best effort at shutdown
                log.warning("event=task_records_not_written_at_stop error=%r", exc)
        for store in (self.tasks, self.credits):
            if store is not None:
                try:
                    store.close()
                except Exception as exc:  # pragma: no cover - best effort at shutdown
                    log.warning("event=compute_store_close_failed error=%r", exc)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await self.node.subscribe(TOPIC_COMPUTE)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.queue.run)
            nursery.start_soon(self.writer.run)
            nursery.start_soon(self._usage_flusher)
            nursery.start_soon(self._admitter.run)
            nursery.start_soon(self._finisher.run)
            nursery.start_soon(self._recorder.run)
            nursery.start_soon(self._announcer)
            await self._resume_unfinished()
            task_status.started()
            await trio.sleep_forever()

    async def _resume_unfinished(self) -> None:
        """After a restart: tasks that were in flight end as failed (their module is gone)."""
        records = await self.node.blocking(self.tasks.unfinished)
        for record in records:
            log.info("event=task_abandoned_at_restart task=%s state=%s", record.task_id, record.state)
            await self._finish(record, TaskState.FAILED, "node restarted while the task was in flight")

    # --- info ------------------------------------------------------------------------

    def executor_info(self) -> ExecutorInfo:
        cfg = self.node.config
        depth = self.queue.queue_depth
        running = self.queue.running
        conc = self.queue.concurrency
        free = max(0.0, 1.0 - running / conc)
        return ExecutorInfo(
            did=self.node.did, region=cfg.region, capabilities=dict(cfg.capabilities),
            trust=cfg.trust.default_trust,
            capacity=Capacity(cpu_free=free, memory_free=free, cpu_cores=self.settings.cpu_cores,
                              memory_mb=self.settings.memory_mb),
            queue_depth=depth, blobs=list(self.settings.blobs),
        )

    # --- submitter side ----------------------------------------------------------------

    async def submit(self, task: ComputeTask, module: bytes, *, at_ms: int | None = None) -> TaskRecord:
        """Admit (or reject) ``task`` and start placing it; returns the record."""
        if "submitter" not in self.roles:
            raise SubmitError("not_a_submitter", "this node does not take submissions (roles)")
        now = at_ms if at_ms is not None else self.node.now_ms()
        if task.module_hash is not None and task.module_hash != module_hash(module):
            raise SubmitError("module_hash_mismatch", "module_hash does not match the module bytes")
        if task.module_hash is None:
            task = task.model_copy(update={"module_hash": module_hash(module)})
        if task.coop_id not in self.node.config.coops:
            raise SubmitError("coop_not_served", f"this node does not serve coop {task.coop_id}")
        if task.id in self._records or task.id in self._admitting:
            raise SubmitError("duplicate_task", f"task {task.id} was already submitted")

        # Admissions run one after another in the admitter's calls: reading usage,
        # deciding and taking the concurrency slot (and any credit reservation) form
        # one step, so a burst of submissions cannot all pass a limit that only the
        # first should.
        self._admitting.add(task.id)
        try:
            record, decision, refusal = await self._admitter((task, now))
        finally:
            self._admitting.discard(task.id)
        self._records[task.id] = record
        TASKS_BY_STATE.labels(record.state.value).inc()
        if record.state is TaskState.REJECTED:
            violations = ([{"rule": "commons.credits", "reason": str(refusal)}] if refusal is not None
                          else [v.model_dump(mode="json") for v in decision.violations])
            self._emit("TaskRejected", task_id=task.id, submitter=task.submitter, coop=task.coop_id,
                       reason=record.reason, violations=violations)
            log.warning("event=task_rejected task=%s coop=%s member=%s reason=%r",
                        task.id, task.coop_id, task.submitter, record.reason)
            return record
        if decision.violations:
            self._emit("PolicyViolationAdmitted", task_id=task.id, coop=task.coop_id,
                       mode=decision.enforcement_mode.value,
                       violations=[v.model_dump(mode="json") for v in decision.violations])
        self._usage_changed(task.coop_id)
        deadline = task.deadline_ms or (now + self.settings.default_deadline_ms)
        send, receive = trio.open_memory_channel(256)
        pending = _Pending(task=task, module=module, constraints=decision.constraints,
                           adjusted=decision.adjusted_priority, deadline_ms=deadline,
                           submitted_at=time.perf_counter(), offers_send=send, offers_recv=receive)
        self._pending[task.id] = pending
        self._nursery.start_soon(self._drive, pending)
        return record

    def _admit_many(self, steps: list[tuple[ComputeTask, int]]) -> list[Any]:
        """Blocking: admit or reject each task in order; one usage transaction for their
        slots, then one write of their records, before any submitter hears its answer
        (so a node killed a moment later still knows every task whose slot it took).

        Returns each task's ``(record, decision, refusal)``, or the ``SubmitError``
        that refused it before anything was taken. Anything else fails the whole
        batch: the usage transaction rolls back and the credit reservations it
        made are given back.
        """
        outcomes: list[Any] = []
        reserved: list[str] = []
        known = self.tasks.known([task.id for task, _ in steps])  # submitted before a restart
        try:
            with self.node.usage_store.batch():
                for task, now in steps:
                    if task.id in known:
                        outcomes.append(SubmitError("duplicate_task", f"task {task.id} was already submitted"))
                        continue
                    try:
                        outcome = self._admit(task, now)
                    except SubmitError as exc:
                        outcomes.append(exc)
                        continue
                    outcomes.append(outcome)
                    if outcome[0].state is TaskState.ADMITTED and task.scope == ScopeLevel.COMMONS:
                        reserved.append(task.id)
            self.tasks.save_many([o[0] for o in outcomes if not isinstance(o, SubmitError)])
        except BaseException:
            for task_id in reserved:
                try:
                    self.credits.release(task_id)
                except Exception as exc:  # the restart sweep finds it: no task holds it
                    log.error("event=reservation_not_released task=%s error=%r", task_id, exc)
            raise
        return outcomes

    def _admit(self, task: ComputeTask, now: int) -> tuple[TaskRecord, Any, InsufficientCredits | None]:
        """Blocking: admit or reject ``task`` (part of :meth:`_admit_many`'s batch).

        Reads the coop's current policy and the member's merged usage (with the
        slots this batch took so far), decides, and for an admitted task takes
        the member's concurrency slot and any Commons credit reservation.
        """
        version = self.node.policy_store.current(task.coop_id, now)
        if version is None:
            raise SubmitError("no_policy", f"coop {task.coop_id} has no policy on this node")
        usage = self.tracker.get_usage(task.coop_id, task.submitter, now)
        started = time.perf_counter()
        decision = evaluate(version.policy, task, task.submitter, usage, now)
        record_decision_metrics(decision, time.perf_counter() - started)
        record = TaskRecord(
            task_id=task.id, coop_id=task.coop_id, submitter=task.submitter, state=TaskState.SUBMITTED,
            task=task.model_dump(mode="json"), policy_hash=version.policy_hash,
            policy_version=version.version, adjusted_priority=decision.adjusted_priority.value,
            decision=decision.model_dump(mode="json"), created_at_ms=now, updated_at_ms=now,
        )
        refusal = None
        if not decision.allowed:
            record = record.moved(TaskState.REJECTED, now, reason=explain(decision))
        else:
            if task.scope == ScopeLevel.COMMONS:
                cost = estimate_cost(task, self.rate)
                balance = self._credit_balance(task.coop_id, task.submitter)
                try:
                    self.credits.reserve(task.coop_id, task.submitter, task.id, cost, balance, now_ms=now)
                except InsufficientCredits as exc:
                    refusal = exc
                    record = record.moved(TaskState.REJECTED, now, reason=str(exc),
                                          detail={"reason": "insufficient_credits", "balance": balance,
                                                  "required": cost})
            if refusal is None:
                self.tracker.task_claimed(task.coop_id, task.submitter, task.id, now)
                record = record.moved(TaskState.ADMITTED, now, reason=None,
                                      detail={"adjusted_priority": decision.adjusted_priority.value})
        return record, decision, refusal

    def _credit_balance(self, coop_id: str, member: str) -> int:
        """Commons credits earned minus spent over the retained months, merged across nodes."""
        earned = spent = 0
        for entry in self.node.usage_store.entries(coop_id):
            if entry.member == member:
                earned += entry.credits_earned
                spent += entry.credits_spent
        return earned - spent

    async def wait(self, task_id: str, timeout: float | None = None) -> TaskRecord | None:
        pending = self._pending.get(task_id)
        if pending is not None:
            with trio.move_on_after(timeout if timeout is not None else float("inf")):
                await pending.done.wait()
        return await self.status(task_id)

    async def status(self, task_id: str) -> TaskRecord | None:
        record = self._records.get(task_id)
        if record is None:
            record = await self.node.blocking(self.tasks.get, task_id)
        return record

    async def list(self, *, coop_id: str | None = None, state: TaskState | None = None,
                   limit: int = 100) -> list[TaskRecord]:
        await self.writer.flush()
        return await self.node.blocking(lambda: self.tasks.list(coop_id=coop_id, state=state, limit=limit))

    async def cancel(self, task_id: str, *, reason: str = "cancelled by the submitter") -> TaskRecord | None:
        pending = self._pending.get(task_id)
        record = await self.status(task_id)
        if record is None or record.state.final:
            return record
        if pending is not None:
            pending.cancelled = True
            running = self._running.get(task_id)
            if running is not None and running.handle is not None and hasattr(running.handle, "cancel"):
                running.handle.cancel()
            if pending.executor_peer is not None:
                self._nursery.start_soon(self._send_cancel, pending.executor_peer, task_id)
            if pending.cancel is not None:
                pending.cancel.cancel()
            await pending.done.wait()
            return await self.status(task_id)
        await self._finish(record, TaskState.CANCELLED, reason)
        return await self.status(task_id)

    def explain(self, task_id: str, executor: str | None = None) -> dict[str, Any] | None:
        decision = self._decisions.get(task_id)
        if decision is None:
            record = self._records.get(task_id)
            if record is None or record.placement is None:
                return None
            decision = PlacementDecision.model_validate(record.placement)
        out = {"task_id": task_id, "winner": decision.winner, "waiting_for": decision.waiting_for,
               "offers": [self._offer_view(r) for r in decision.results]}
        if executor is not None:
            out["explanation"] = decision.explain(executor)
        elif decision.winner is not None:
            out["explanation"] = decision.explain(decision.winner)
        return out

    @staticmethod
    def _offer_view(r) -> dict[str, Any]:
        return {
            "executor": r.did, "feasible": r.feasible, "score": r.score, "rank": r.rank,
            "excluded_by": None if r.excluded_by is None else
            {"filter": r.excluded_by.filter, "reason": r.excluded_by.reason},
            "breakdown": {name: {"value": c.value, "weight": c.weight, "inputs": c.inputs}
                          for name, c in (r.breakdown or {}).items()},
        }

    async def _drive(self, pending: _Pending) -> None:
        """Place and run one admitted task until it reaches a final state."""
        task = pending.task
        excluded: list[str] = []
        attempts = 0
        backoff = self.settings.reannounce_ms
        announce = True
        widely = False  # announced again after silence: to the whole mesh
        try:
            with trio.CancelScope(deadline=_deadline_trio(pending.deadline_ms, self.node.now_ms())) as scope:
                pending.cancel = scope
                while attempts < self.settings.max_attempts:
                    decision = await self._collect_and_place(pending, excluded, announce=announce, widely=widely)
                    if not decision.placed:
                        await self._move(task.id, TaskState.WAITING, "no feasible executor yet",
                                         waiting_for=decision.waiting_for)
                        # Offers that arrive late are kept, and one arriving ends the wait:
                        # the task is placed on what has arrived, without announcing it again
                        # (on a loaded mesh, announcing again would only add to the load that
                        # made the offers late). Silence until the backoff announces again.
                        pending.offer_arrived = trio.Event()
                        with trio.move_on_after(backoff / 1000) as waited:
                            await pending.offer_arrived.wait()
                        announce = widely = waited.cancelled_caught
                        if announce:
                            backoff = min(backoff * 2, self.settings.reannounce_max_ms)
                        continue
                    backoff = self.settings.reannounce_ms
                    announce, widely = True, False
                    outcome = await self._claim_and_run(pending, decision, excluded)
                    if outcome is None:
                        return
                    attempts += 1
                    changes = {"excluded_executors": list(excluded), "attempts": attempts}
                    if self._records[task.id].state is TaskState.ADMITTED:
                        await self._move_quiet(task.id, reason=outcome, **changes)
                    else:
                        await self._move(task.id, TaskState.ADMITTED, outcome, **changes)
                await self._finish(self._records[task.id], TaskState.FAILED,
                                   f"gave up after {attempts} placement attempts: {self._records[task.id].reason}")
                return
            if pending.executor_peer is not None:
                self._nursery.start_soon(self._send_cancel, pending.executor_peer, task.id)
            record = self._records[task.id]
            if pending.cancelled:
                await self._finish(record, TaskState.CANCELLED, "cancelled by the submitter")
            elif not record.state.final:
                waiting = f"; waiting for: {'; '.join(record.waiting_for)}" if record.waiting_for else ""
                await self._finish(record, TaskState.EXPIRED, f"deadline passed before completion{waiting}")
        except Exception as exc:
            log.exception("event=task_driver_crashed task=%s error=%r", task.id, exc)
            record = self._records.get(task.id)
            if record is not None and not record.state.final:
                await self._finish(record, TaskState.FAILED, f"internal error: {exc!r}")
        finally:
            self._pending.pop(task.id, None)
            pending.done.set()

    async def _collect_and_place(self, pending: _Pending, excluded: list[str], *,
                                 announce: bool = True, widely: bool = False) -> PlacementDecision:
        """Rank the offers kept so far plus, when ``announce``, those an announcement brings
        within the offer window (``widely``: gossiped to the whole mesh)."""
        task = pending.task
        now = self.node.now_ms()
        feasible = feasibility_check(task, pending.constraints, trust=self.trust,
                                     min_trust=self.node.config.trust.min_trust, now_ms=now)
        window = OfferWindow.open(task.id, now_ms=now, want=self.settings.want_offers,
                                  window_ms=self.node.config.offer_window_ms,
                                  feasible=lambda o: o.did not in excluded and feasible(o))
        receive = pending.offers_recv
        started = time.perf_counter()
        while True:  # offers kept from earlier windows count first
            try:
                window.add(receive.receive_nowait(), self.node.now_ms())
            except trio.WouldBlock:
                break
        if announce and not window.closed(self.node.now_ms()):
            self._announce({
                "task": task.model_dump(mode="json"),
                "adjusted_priority": pending.adjusted.value,
                "constraints": pending.constraints.model_dump(mode="json"),
                "policy_hash": self._records[task.id].policy_hash,
                "exclude": list(excluded),
                "deadline_ms": pending.deadline_ms,
            }, widely=widely)
            if "executor" in self.roles and self.node.did not in excluded:
                local = self._offer_for(task, pending.constraints, list(excluded))
                if local is not None:
                    window.add(local, self.node.now_ms())
            with trio.move_on_at(_deadline_trio(window.deadline_ms, self.node.now_ms())):
                while not window.closed(self.node.now_ms()):
                    window.add(await receive.receive(), self.node.now_ms())
        offers = list(window.offers)
        seen = [o.with_rtt(self._rtt_for(o.did)).with_claims_since(list(self._claimed_at.get(o.did, {}).values()))
                for o in offers]
        decision = place(task, pending.constraints, seen, trust=self.trust,
                         min_trust=self.node.config.trust.min_trust, now_ms=self.node.now_ms())
        PLACEMENT_SECONDS.observe(time.perf_counter() - started)
        if not decision.placed and not offers:
            decision = decision.model_copy(update={"waiting_for": [
                f"no executor offered; wanted: {describe_constraints(pending.constraints, excluded)}"]})
        self._decisions[task.id] = decision
        await self._move_quiet(task.id, placement=decision.model_dump(mode="json"),
                               waiting_for=decision.waiting_for)
        return decision

    def _rtt_for(self, did: str) -> float | None:
        if did == self.node.did:
            return 0.0
        try:
            return self.node.host.rtt_ms(self.node.host.peer_for_did(did))
        except Exception:
            return None

    async def _claim_and_run(self, pending: _Pending, decision: PlacementDecision,
                             excluded: list[str]) -> str | None:
        """Claim the ranked executors in turn; None when the task reached a final state,
        else the reason this attempt failed (the task is then placed again)."""
        task = pending.task
        last_reason = "no executor accepted the claim"
        for did in decision.ranked:
            if pending.cancelled:
                return None
            await self._move(task.id, TaskState.PLACED, f"placed on {did}", executor=did)
            try:
                outcome = await self._run_on(pending, did)
            except ConversationError as exc:
                self.trust.record_failure(did, self.node.now_ms())
                excluded.append(did)
                last_reason = f"executor {did} failed: {exc.reason} {exc.detail}".strip()
                log.info("event=executor_lost task=%s executor=%s reason=%s", task.id, did, exc.reason)
                pending.executor_peer = None
                if self._records[task.id].state is TaskState.RUNNING:
                    return last_reason
                await self._move(task.id, TaskState.ADMITTED, last_reason)
                continue
            if outcome is None:
                return None
            excluded.append(did)
            last_reason = outcome
            await self._move(task.id, TaskState.ADMITTED, outcome)
        return last_reason

    async def _run_on(self, pending: _Pending, did: str) -> str | None:
        """Claim on one executor; None when the task ended, else why the executor refused.

        The claim, the executor's answer and the result are notes on the peers'
        shared streams, matched by task id. An executor that disconnects, or
        does not answer in time, raises ``ConversationError`` (placed again).
        """
        task = pending.task
        claimed = self._claimed_at.setdefault(did, {})
        claimed[task.id] = self.node.now_ms()
        try:
            return await self._claim_on(pending, did)
        finally:
            claimed.pop(task.id, None)

    async def _claim_on(self, pending: _Pending, did: str) -> str | None:
        task = pending.task
        claim = {
            "task": task.model_dump(mode="json"), "module": pending.module,
            "adjusted_priority": pending.adjusted.value,
            "constraints": pending.constraints.model_dump(mode="json"),
            "policy_hash": self._records[task.id].policy_hash, "deadline_ms": pending.deadline_ms,
        }
        if did == self.node.did:
            return await self._run_local(pending, claim)
        peer = self.node.host.peer_for_did(did)
        waiter = _ClaimWaiter(executor=did, task_id=task.id)
        self._claims[task.id] = waiter
        pending.executor_peer = peer
        try:
            await self.direct.notify(peer, CLAIM, claim)
            reply = await self._await_note(waiter, peer, timeout=self.settings.claim_timeout_ms / 1000)
            if reply.type == REFUSE:
                return f"executor {did} refused: {reply.payload.get('reason')}"
            if reply.type == ACCEPT:
                await self._move(task.id, TaskState.RUNNING, f"running on {did}")
                budget = max(0.1, (pending.deadline_ms - self.node.now_ms() + self.settings.result_grace_ms) / 1000)
                reply = await self._await_note(waiter, peer, timeout=budget, probe=True)
            elif reply.type == RESULT:  # a short run answers with its result alone
                await self._move(task.id, TaskState.RUNNING, f"ran on {did}")
            if reply.type != RESULT:
                raise ConversationError("bad_reply", reply.type)
            return await self._settle(pending, did, reply.payload)
        finally:
            self._claims.pop(task.id, None)

    async def _await_note(self, waiter: "_ClaimWaiter", peer: Any, *, timeout: float, probe: bool = False):
        """The executor's next answer for this claim.

        Fails when it times out, when the executor disconnects, or (``probe``)
        when the executor stops vouching for the task: a restarted executor
        reconnects under the same peer id but no longer knows the task, so the
        connection alone cannot tell.
        """
        interval = self.settings.probe_interval_ms / 1000
        unanswered = 0
        with trio.move_on_after(timeout) as scope:
            while True:
                with trio.move_on_after(interval):
                    note = await waiter.receive.receive()
                    if note.type != PROGRESS:
                        return note
                    if note.payload.get("state") != "running":
                        raise ConversationError("lost", f"executor {waiter.executor} no longer runs the task")
                    unanswered = 0
                    continue
                if not self.node.host.is_connected(peer):
                    raise ConversationError("disconnected", f"executor {waiter.executor} left the mesh")
                if probe:
                    if unanswered >= self.settings.probe_misses:
                        raise ConversationError("lost", f"executor {waiter.executor} stopped answering")
                    unanswered += 1
                    try:
                        await self.direct.notify(peer, PROBE, {"task_id": waiter.task_id}, timeout=interval)
                    except ConversationError:
                        pass
        assert scope.cancelled_caught
        raise ConversationError("timeout", f"no answer from {waiter.executor} in {timeout:.1f}s")

    async def _run_local(self, pending: _Pending, claim: dict) -> str | None:
        task = pending.task
        refusal = self._claim_refusal(task.id, claim)
        if refusal is not None:
            return f"executor {self.node.did} refused: {refusal}"
        await self._move(task.id, TaskState.RUNNING, f"running on {self.node.did}")
        payload = await self._execute(claim, self.node.did)
        return await self._settle(pending, self.node.did, payload)

    async def _settle(self, pending: _Pending, did: str, payload: Any) -> str | None:
        task = pending.task
        try:
            receipt = Receipt.from_wire(payload.get("receipt"))
        except Exception as exc:
            raise ConversationError("bad_receipt", repr(exc)) from None
        if (not verify_receipt(receipt) or receipt.executor != did or receipt.task_id != task.id
                or receipt.task_hash != task.task_hash()):
            metrics.MESSAGES_DROPPED.labels("direct", "forged_receipt").inc()
            raise ConversationError("forged_receipt", f"receipt for {task.id} from {did} does not verify")
        result = {"values": payload.get("values", []), "outcome": receipt.outcome.value,
                  "error": payload.get("error")}
        if receipt.outcome is Outcome.COMPLETED:
            self.trust.record_success(did, self.node.now_ms())
            state, reason = TaskState.COMPLETED, None
        elif receipt.outcome is Outcome.CANCELLED and pending.cancelled:
            state, reason = TaskState.CANCELLED, "cancelled by the submitter"
        else:
            state, reason = TaskState.FAILED, f"{receipt.outcome.value}: {payload.get('error') or ''}".strip(": ")
        await self._finish(self._records[task.id], state, reason, receipt=receipt,
                           usage=self._executor_usage(payload.get("usage"), did, task), result=result,
                           executor=did)
        return None

    def _executor_usage(self, item: Any, did: str, task: ComputeTask) -> SignedUsageEntry | None:
        """The executor's usage entry sent with its result, if it is one for this task's
        member written by that executor (its signature is checked at merge). Anything
        else is dropped and counted; gossip brings the entry anyway."""
        if item is None or did == self.node.did:
            return None
        try:
            signed = SignedUsageEntry.from_wire(item)
        except UsageRejection as exc:
            why = f"malformed: {exc}"
        else:
            e = signed.entry
            if e.writer == did and signed.signer == did and e.coop_id == task.coop_id and e.member == task.submitter:
                return signed
            why = f"entry of {e.writer} for {e.coop_id}/{e.member}"
        metrics.MESSAGES_DROPPED.labels("direct", "bad_usage").inc()
        log.warning("event=result_usage_dropped task=%s executor=%s reason=%r", task.id, did, why[:200])
        return None

    async def _send_cancel(self, peer, task_id: str) -> None:
        try:
            await self.direct.notify(peer, CANCEL, {"task_id": task_id}, timeout=2.0)
        except ConversationError as exc:
            log.info("event=cancel_not_delivered task=%s reason=%s", task_id, exc.reason)

    # --- executor side -------------------------------------------------------------------

    def _offer_for(self, task: ComputeTask, constraints: PlacementConstraints, exclude: list[str]) -> Offer | None:
        if "executor" not in self.roles or self.node.did in exclude:
            return None
        if task.coop_id not in self.node.config.coops:
            return None
        if self.node.did in task.locality_hints.avoid_executors:
            return None
        info = self.executor_info()
        if check_executor(constraints, info):
            return None
        if self.queue.queue_depth >= self.settings.max_queued:
            return None
        OFFERS.labels("made").inc()
        return Offer(task_id=task.id, executor=info, rtt_ms=None, offered_at_ms=self.node.now_ms())

    def _announce(self, item: dict[str, Any], *, widely: bool = False) -> None:
        """Queue one task's announcement; the announcer sends them in batches."""
        self._announcements.append((item, widely))
        self._announce_ready.set()

    async def _announcer(self) -> None:
        """Send queued announcements, one message at a time in flight (like Nagle's rule).

        Each gossip message costs every node on the mesh its transport, its
        validation and its relaying, so a burst of submissions should share one
        message. A message is in flight until the first offer for one of its
        tasks comes back (or ``announce_interval_ms`` passes), and the next
        one leaves no sooner than a quarter of that interval after it: tasks
        submitted meanwhile wait and go together. Alone, a task goes out at
        once; under load the batches grow with the mesh's own delay (up to
        ``MAX_BATCH`` a message).
        """
        interval = self.settings.announce_interval_ms / 1000
        last = float("-inf")
        while True:
            await self._announce_ready.wait()
            with trio.move_on_at(last + interval):
                await self._announce_answered.wait()
            await trio.sleep_until(last + interval / 4)
            await trio.sleep(0)  # tasks admitted in this same tick join the batch
            self._announce_ready = trio.Event()
            last = trio.current_time()
            self._announce_answered = trio.Event()
            queued, self._announcements = self._announcements, []
            self._in_flight = {item["task"]["id"] for item, _ in queued}
            by_coop: dict[str, list[tuple[dict[str, Any], bool]]] = {}
            for entry in queued:
                by_coop.setdefault(entry[0]["task"]["coop_id"], []).append(entry)
            for coop, entries in by_coop.items():
                for i in range(0, len(entries), MAX_BATCH):
                    batch = entries[i:i + MAX_BATCH]
                    try:
                        await self._send_announcement(coop, [item for item, _ in batch],
                                                      widely=any(w for _, w in batch))
                    except Exception as exc:  # the tasks re-announce after their window
                        log.warning("event=announce_failed tasks=%d error=%r", len(batch), exc)

    async def _send_announcement(self, coop: str, items: list[dict[str, Any]], *, widely: bool) -> None:
        """One announcement message: straight to the coop's recent offerers when there
        are enough of them, else (and for a periodic refresh, and ``widely``) by gossip."""
        body = {"submitter_node": self.node.did, "submitter_addrs": self.node.listen_addrs(), "tasks": items}
        now = trio.current_time()
        refresh = self.settings.announce_refresh_ms / 1000
        peers = [] if widely else self._direct_peers(coop)
        if len(peers) < self.settings.want_offers or now - self._gossiped_at.get(coop, float("-inf")) >= refresh:
            self._gossiped_at[coop] = now
            ANNOUNCEMENTS.labels("gossip").inc()
            await self.node.publish(TOPIC_COMPUTE, ANNOUNCE, body)
            return
        ANNOUNCEMENTS.labels("direct").inc()
        frame = self.direct.seal(ANNOUNCE, body)
        for peer in peers:
            self._nursery.start_soon(self._send_direct_announcement, peer, frame)

    async def _send_direct_announcement(self, peer: Any, frame: bytes) -> None:
        try:
            await self.direct.send_frame(peer, frame, timeout=2.0)
        except ConversationError as exc:  # silence then announces the tasks to the whole mesh
            log.info("event=announce_not_delivered peer=%s reason=%s", peer, exc.reason)

    def _direct_peers(self, coop: str) -> list[Any]:
        """Connected executors that offered for ``coop`` within ``OFFERER_MEMORY_MS``."""
        seen = self._offerers.get(coop)
        if not seen:
            return []
        now = self.node.now_ms()
        host = self.node.host
        peers = []
        for did, at in list(seen.items()):
            if now - at > OFFERER_MEMORY_MS:
                del seen[did]
                continue
            peer = host.peer_for_did(did)
            if host.is_connected(peer):
                peers.append(peer)
        return peers

    async def _on_announce(self, delivery: Delivery) -> None:
        self._offer_on(delivery.envelope.payload)

    async def _on_direct_announce(self, env, conv: Conversation) -> None:
        """An announcement sent straight to us: the gossip path's schema, then the same offers."""
        reason = _announce_schema(env, "")
        if reason is not None:
            metrics.MESSAGES_DROPPED.labels("direct", reason).inc()
            log.info("event=announce_dropped peer=%s reason=%s", conv.peer_did, reason)
            return
        self._offer_on(env.payload)

    def _offer_on(self, p: dict[str, Any]) -> None:
        """Offer for each announced task we can run, all in one note to the submitter."""
        submitter = p.get("submitter_node")
        if submitter == self.node.did or "executor" not in self.roles:
            return
        offers = []
        for item in p["tasks"]:
            try:
                task = ComputeTask.model_validate(item["task"])
                constraints = PlacementConstraints.model_validate(item.get("constraints") or {})
            except (ValidationError, KeyError, TypeError) as exc:
                metrics.MESSAGES_DROPPED.labels("compute", "bad_schema").inc()
                log.info("event=announce_invalid signer=%s error=%s", submitter, exc)
                continue
            offer = self._offer_for(task, constraints, list(item.get("exclude") or []))
            if offer is not None:
                offers.append(offer)
        if offers:
            self._nursery.start_soon(self._send_offers, submitter, list(p.get("submitter_addrs") or []), offers)

    async def _send_offers(self, submitter: str, addrs: list[str], offers: list[Offer]) -> None:
        try:
            peer = self.node.host.peer_for_did(submitter)
            if not self.node.host.is_connected(peer):
                for addr in addrs:
                    try:
                        await self.node.host.connect(addr, timeout=2.0)
                        break
                    except ConnectionError:
                        continue
            await self.direct.notify(peer, OFFER, {"offers": [o.model_dump(mode="json") for o in offers]},
                                     timeout=2.0)
        except (ConversationError, ValueError) as exc:
            log.info("event=offer_not_delivered tasks=%d reason=%r", len(offers), exc)

    async def _on_offer(self, env, conv: Conversation) -> None:
        items = env.payload.get("offers") if isinstance(env.payload, dict) else None
        if not isinstance(items, list) or len(items) > MAX_BATCH:
            metrics.MESSAGES_DROPPED.labels("direct", "bad_schema").inc()
            return
        for item in items:
            try:
                offer = Offer.from_wire(item)
            except Exception as exc:
                metrics.MESSAGES_DROPPED.labels("direct", "bad_schema").inc()
                log.info("event=offer_invalid peer=%s error=%r", conv.peer_did, exc)
                continue
            if offer.did != conv.peer_did:
                metrics.MESSAGES_DROPPED.labels("direct", "foreign_offer").inc()
                log.info("event=offer_dropped reason=foreign_offer peer=%s offer_for=%s", conv.peer_did, offer.did)
                continue
            if offer.task_id in self._in_flight:
                self._announce_answered.set()
            pending = self._pending.get(offer.task_id)
            if pending is None:
                continue  # the task is placed or finished
            self._offerers.setdefault(pending.task.coop_id, {})[conv.peer_did] = self.node.now_ms()
            OFFERS.labels("received").inc()
            try:
                pending.offers_send.send_nowait(offer)
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                continue
            pending.offer_arrived.set()

    def _claim_refusal(self, task_id: str, claim: dict) -> str | None:
        if "executor" not in self.roles:
            return "not_an_executor"
        if task_id in self._running:
            return "already_claimed"
        try:
            constraints = PlacementConstraints.model_validate(claim.get("constraints") or {})
        except ValidationError:
            return "bad_constraints"
        reasons = check_executor(constraints, self.executor_info())
        if reasons:
            return "constraints: " + "; ".join(reasons)
        if self.queue.queue_depth >= self.settings.max_queued:
            return "queue_full"
        return None

    async def _on_claim(self, env, conv: Conversation) -> None:
        """A claim note: answer with accept or refuse, then run and send the result."""
        self._nursery.start_soon(self._serve_claim, env.payload, conv.peer_did)

    async def _serve_claim(self, claim: Any, submitter: str) -> None:
        peer = self.node.host.peer_for_did(submitter)
        try:
            try:
                task = ComputeTask.model_validate(claim["task"])
            except (ValidationError, KeyError, TypeError) as exc:
                CLAIMS.labels("bad_schema").inc()
                task_id = claim.get("task", {}).get("id") if isinstance(claim, dict) else None
                if isinstance(task_id, str):
                    await self.direct.notify(peer, REFUSE, {"task_id": task_id, "reason": f"bad_schema: {exc}"[:500]})
                return
            refusal = self._claim_refusal(task.id, claim)
            if refusal is not None:
                CLAIMS.labels(refusal.split(":")[0]).inc()
                await self.direct.notify(peer, REFUSE, {"task_id": task.id, "reason": refusal})
                return
            self._running[task.id] = _Running(submitter=submitter)

            async def accept() -> None:
                await self.direct.notify(peer, ACCEPT, {"task_id": task.id})

            try:
                payload = await self._execute(claim, submitter, accept=accept)
            except ConversationError as exc:
                if exc.reason == "queue_full":
                    await self.direct.notify(peer, REFUSE, {"task_id": task.id, "reason": exc.reason})
                    return
                raise
            await self.direct.notify(peer, RESULT, payload)
        except ConversationError as exc:
            log.info("event=claim_answer_lost submitter=%s reason=%s", submitter, exc.reason)
        except Exception as exc:  # a bug here must not take the node's other tasks down
            log.exception("event=claim_failed submitter=%s error=%r", submitter, exc)
            CLAIMS.labels("internal_error").inc()

    async def _on_answer(self, env, conv: Conversation) -> None:
        """Accept, refuse or result from an executor, for a claim this node made."""
        task_id = env.payload.get("task_id") if isinstance(env.payload, dict) else None
        waiter = self._claims.get(task_id) if isinstance(task_id, str) else None
        if waiter is None or waiter.executor != conv.peer_did:
            metrics.MESSAGES_DROPPED.labels("direct", "unexpected_answer").inc()
            return
        try:
            waiter.send.send_nowait(env)
        except trio.WouldBlock:
            metrics.MESSAGES_DROPPED.labels("direct", "unexpected_answer").inc()

    async def _execute(self, claim: dict, submitter_node: str, *,
                       accept: Callable[[], Awaitable[None]] | None = None) -> dict[str, Any]:
        """Run a claimed task here; record our usage; return the result payload.

        ``accept`` is called once the run is queued, unless it finishes within
        ``accept_grace_ms``: a short task answers with its result alone, which
        tells the submitter both that it was accepted and how it ended (one
        note instead of two, on both nodes, for most tasks).
        """
        task = ComputeTask.model_validate(claim["task"])
        running = self._running.setdefault(task.id, _Running(submitter=submitter_node))
        try:
            module = claim.get("module")
            if not isinstance(module, bytes):
                module = b""
            req = ExecutionRequest(
                task_id=task.id, task_hash=task.task_hash(), coop_id=task.coop_id, member=task.submitter,
                module=module, module_hash=task.module_hash, entry=task.entry, args=list(task.args),
                fuel_limit=task.fuel_limit, priority=task.priority,
                adjusted_priority=TaskPriority(claim.get("adjusted_priority", task.priority.value)),
            )
            try:
                started = self.executor.submit(req)
            except QueueFull:
                started = None
            if started is None:
                CLAIMS.labels("queue_full").inc()
                raise ConversationError("queue_full")
            running.handle = started
            if accept is not None:
                if not isinstance(started, ExecutionResult):
                    with trio.move_on_after(self.settings.accept_grace_ms / 1000):
                        await started.wait()  # only the waiting is cancelled, never the run
                if isinstance(started, ExecutionResult) or not started.done:
                    try:
                        await accept()
                    except ConversationError:  # the submitter is gone: stop the run it will not hear of
                        if not isinstance(started, ExecutionResult):
                            started.cancel()
                        raise
            result, receipt = await self.executor.finish(req, started)
            CLAIMS.labels(receipt.outcome.value).inc()
            usage = await self._record_execution(task, receipt)
            payload = {"task_id": task.id, "values": list(result.values), "error": result.error,
                       "receipt": receipt.to_wire()}
            if usage is not None:
                payload["usage"] = usage.to_wire()
            return payload
        finally:
            self._running.pop(task.id, None)

    async def _record_execution(self, task: ComputeTask, receipt: Receipt) -> SignedUsageEntry | None:
        """Record the run in our usage; return our signed entry for the member, which
        travels with the result so the submitter's view holds the run's CPU before
        it frees the member's slot (gossip brings it to everyone else)."""
        earned = actual_cost(receipt.fuel_used, self.rate) if (
            task.scope == ScopeLevel.COMMONS and receipt.outcome.ran) else 0
        usage = await self._recorder((task, receipt, earned))
        self._usage_changed(task.coop_id)
        return usage

    def _record_many(self, steps: list[tuple[ComputeTask, Receipt, int]]) -> list[SignedUsageEntry | None]:
        """Blocking: record many runs in one usage transaction. Each gets our entry for its
        member signed at the end of the transaction (one signature for a member's runs)."""
        store = self.node.usage_store
        with store.batch():
            now = self.node.now_ms()
            for task, receipt, earned in steps:
                self.tracker.record_execution(task.coop_id, task.submitter, task.id, receipt.cpu_ms,
                                              receipt.fuel_used, executor_did=self.node.did, now_ms=now,
                                              count_task=False)
                if earned:
                    self.tracker.credit_earned(task.coop_id, self.node.did, earned, f"earn:{task.id}")
            return [store.own_signed(task.coop_id, task.submitter, month_key(now)) for task, _, _ in steps]

    async def _on_probe(self, env, conv: Conversation) -> None:
        """Does this executor still run the task? (Answered from memory: a restart forgets.)"""
        task_id = env.payload.get("task_id") if isinstance(env.payload, dict) else None
        if not isinstance(task_id, str):
            return
        running = self._running.get(task_id)
        state = "running" if running is not None and running.submitter == conv.peer_did else "unknown"
        self._nursery.start_soon(self._answer_probe, conv.peer_did, task_id, state)

    async def _answer_probe(self, submitter: str, task_id: str, state: str) -> None:
        try:
            await self.direct.notify(self.node.host.peer_for_did(submitter), PROGRESS,
                                     {"task_id": task_id, "state": state}, timeout=2.0)
        except ConversationError:
            pass

    async def _on_cancel(self, env, conv: Conversation) -> None:
        task_id = env.payload.get("task_id") if isinstance(env.payload, dict) else None
        running = self._running.get(task_id)
        if running is None or running.submitter != conv.peer_did:
            return
        running.cancelled = True
        if running.handle is not None and hasattr(running.handle, "cancel"):
            running.handle.cancel()

    # --- shared helpers ---------------------------------------------------------------

    def _usage_changed(self, coop_id: str) -> None:
        """Our usage entries for ``coop_id`` changed: gossip them with the next flush."""
        self._dirty_coops.add(coop_id)
        self._usage_dirty.set()

    async def _usage_flusher(self) -> None:
        """Gossip changed usage at most every ``usage_flush_ms``.

        A member's entry is one record however many tasks changed it, so under
        load one message carries many updates; quotas see them within the
        flush interval (sync repairs anything gossip loses).
        """
        while True:
            await self._usage_dirty.wait()
            self._usage_dirty = trio.Event()
            coops, self._dirty_coops = self._dirty_coops, set()
            for coop in sorted(coops):
                try:
                    await self._publish_own_usage(coop)
                except Exception as exc:  # a failed publish is repaired by sync
                    log.warning("event=usage_publish_failed coop=%s error=%r", coop, exc)
            await trio.sleep(self.settings.usage_flush_ms / 1000)

    async def _publish_own_usage(self, coop_id: str) -> None:
        """Gossip this node's usage entries for ``coop_id`` changed since the last publish.

        Only on the coop's own topic, and only when this node serves the coop;
        anything lost on the way is repaired by sync.
        """
        if coop_id not in self.node.config.coops:
            return
        me = self.node.did
        store = self.node.usage_store
        since = self._published.get(coop_id, 0)

        def changed() -> tuple[list, bool]:
            marks = store.version_vector(coop_id)
            vv = {w: 2**62 for w in marks}
            vv[me] = since
            entries = [e for e in store.delta_since(coop_id, vv) if e.entry.writer == me]
            # vouch only for a history this node holds whole (not one restored in part)
            return entries, bool(entries) and marks.get(me, 0) >= entries[-1].entry.version

        entries, whole = await self.node.blocking(changed)
        if entries:
            await self.node.publish_usage(coop_id, entries, since=since if whole else None)
            self._published[coop_id] = max(since, entries[-1].entry.version)  # entries come in version order

    def _save(self, record: TaskRecord) -> None:
        """Keep ``record`` as the task's current one and queue it for the writer."""
        self._records[record.task_id] = record
        TASKS_BY_STATE.labels(record.state.value).inc()
        self.writer.put(record)

    async def _move(self, task_id: str, state: TaskState, reason: str | None, **changes: Any) -> None:
        record = self._records[task_id]
        if record.state is state and state is TaskState.WAITING:
            await self._move_quiet(task_id, reason=reason, **changes)
            return
        self._save(record.moved(state, self.node.now_ms(), reason=reason, **changes))

    async def _move_quiet(self, task_id: str, **changes: Any) -> None:
        """Update fields without a state transition (placement details, waiting reasons)."""
        record = self._records[task_id]
        updated = record.model_copy(update={**changes, "updated_at_ms": self.node.now_ms()})
        self._records[task_id] = updated
        self.writer.put(updated)

    async def _finish(self, record: TaskRecord, state: TaskState, reason: str | None, *,
                      receipt: Receipt | None = None, usage: SignedUsageEntry | None = None,
                      **changes: Any) -> None:
        """Enter a final state: close the task's books, then commit its record.

        The books (the executor's usage entry, completion count, credits
        settled from the receipt or released, the member's slot released) are
        one usage transaction, so no view frees the slot without the run's CPU; each
        step is idempotent, so a node killed between the books and the record
        closes them again harmlessly when it fails the task at restart.
        """
        record = self._records.get(record.task_id, record)
        if record.state.final:
            return
        now = self.node.now_ms()
        final = record.moved(state, now, reason=reason,
                             **({"receipt": _jsonable(receipt.to_wire())} if receipt is not None else {}), **changes)
        self._records[final.task_id] = final  # a second finish (cancel racing a result) stops here
        task = ComputeTask.model_validate(record.task)
        self.writer.forget(task.id)  # an intermediate record still queued would be written in vain
        await self._finisher((task, state, receipt, usage, now, final))
        TASKS_BY_STATE.labels(state.value).inc()
        self._usage_changed(task.coop_id)
        pending = self._pending.get(task.id)
        if pending is not None:
            TASK_LATENCY_SECONDS.labels(state.value).observe(time.perf_counter() - pending.submitted_at)
        self._emit("TaskFinished", task_id=task.id, state=state.value, reason=reason)
        log.info("event=task_finished task=%s state=%s reason=%r", task.id, state.value, reason)

    def _finish_many(self, steps: list[tuple[Any, ...]]) -> list[None]:
        """Blocking: close many tasks' books in one usage transaction, then commit their
        final records in one write (straight to the store: a final record is never
        written over, so an older one still in the record writer cannot undo it)."""
        with self.node.usage_store.batch():
            for *books, _ in steps:
                self._close_books(*books)
        self.tasks.save_many([final for *_, final in steps])
        return [None] * len(steps)

    def _close_books(self, task: ComputeTask, state: TaskState, receipt: Receipt | None,
                     usage: SignedUsageEntry | None, now: int) -> None:
        """Blocking: merge the executor's entry, count a completion, settle or release
        credits, release the member's slot."""
        store = self.node.usage_store
        with store.batch():
            if usage is not None:
                store.merge([usage])
            if state is TaskState.COMPLETED:
                self.tracker.task_completed(task.coop_id, task.submitter, task.id, now)
            if task.scope == ScopeLevel.COMMONS:
                self._close_credits(task, receipt, now)
            self.tracker.task_released(task.coop_id, task.submitter, task.id, now)

    def _close_credits(self, task: ComputeTask, receipt: Receipt | None, now: int) -> None:
        """Charge what the receipt's run cost (the spend replicated in usage), else give the credits back."""
        reservation = self.credits.get(task.id)
        if reservation is None or reservation.state == "released":
            return
        cost = actual_cost(receipt.fuel_used, self.rate) if receipt is not None and receipt.outcome.ran else 0
        if reservation.state == "reserved" and cost == 0:
            self.credits.release(task.id)
            return
        # reserved with a cost, or settled before a crash kept the spend from being recorded
        charged = self.credits.settle(task.id, cost)
        store = self.node.usage_store
        month = month_key(now)
        if charged and store.mark_processed(task.coop_id, "spend", task.id, month, now):
            store.increment(task.coop_id, task.submitter, month=month, credits_spent=charged)

    def _emit(self, kind: str, **fields: Any) -> None:
        event = {"event": kind, "at_ms": self.node.now_ms(), **fields}
        self.events.append(event)
        del self.events[:-1000]


def describe_constraints(c: PlacementConstraints, excluded: list[str]) -> str:
    """What an executor must be to take the task, in one line."""
    parts = []
    if c.required_region:
        parts.append(f"region {c.required_region}")
    for cap in c.required_capabilities:
        parts.append(f"capability {cap.capability}" + (f" >= {cap.min_version}" if cap.min_version else ""))
    if c.allowed_executors:
        parts.append(f"one of {len(c.allowed_executors)} whitelisted executors")
    if c.forbidden_executors or excluded:
        parts.append(f"not one of {len(set(c.forbidden_executors) | set(excluded))} excluded executors")
    parts.extend(f"conflict: {x}" for x in c.conflicts)
    return ", ".join(parts) or "any executor serving the coop"


def _deadline_trio(deadline_ms: int, now: int) -> float:
    """Convert a deadline on the node's clock (ms since epoch) to a trio clock deadline."""
    return trio.current_time() + max(0.0, (deadline_ms - now) / 1000)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value
