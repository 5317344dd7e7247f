"""An in-memory ``NodeService`` for testing the HTTP/JSON-RPC face and icnctl.

It keeps policies with their version history, per-member usage and tasks in
dicts and moves a task one state forward on each status call, so a client's
``--wait`` loop sees progress. It is a test double of the node: the face is
what is under test, not these semantics.
"""

from __future__ import annotations

import threading
from typing import Any

import trio

from icn_p2p.api import schemas as s
from icn_p2p.api.http import ApiApp, BoundAddress, serve
from icn_p2p.api.jsonrpc import Dispatcher
from icn_p2p.api.service import ServiceError, unavailable
from icn_p2p.core.decision import PolicyDecision, Violation
from icn_p2p.core.enums import TaskPriority
from icn_p2p.core.policy import CoopSchedulingPolicy
from icn_p2p.core.usage import MemberUsage

NODE_DID = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
PEER_ID = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
PEER_DID = "did:key:z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH"
PEER_ID_2 = "12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5STiGwxBhgFRcw3UERE"
MONTH = "2025-11"
PIPELINE = ("pending", "announced", "running", "completed")


class MemoryService:
    """Policies, usage and tasks in dicts; deterministic time."""

    def __init__(self) -> None:
        self.now_ms = 1_764_000_000_000
        self.history: dict[str, list[s.PolicyRecord]] = {}
        self.current: dict[str, s.PolicyRecord] = {}
        self.usage: dict[tuple[str, str], MemberUsage] = {}
        self.tasks: dict[str, s.TaskStatus] = {}
        self.decisions: dict[str, PolicyDecision] = {}
        self.crash_on: set[str] = set()
        self.compute_available = True
        self.healthy = True
        self.peers = [
            s.PeerInfo(
                peer_id=PEER_ID_2, did=PEER_DID,
                addrs=[f"/ip4/127.0.0.1/tcp/4002/p2p/{PEER_ID_2}"],
                rtt_ms=1.25, coops=["healthcare-coop"], policy_versions={"healthcare-coop": 1},
            )
        ]

    def _tick(self) -> int:
        self.now_ms += 1000
        return self.now_ms

    def _maybe_crash(self, name: str) -> None:
        if name in self.crash_on:
            raise RuntimeError(f"secret internal detail of {name}")

    # --- policy -----------------------------------------------------------

    async def policy_set(self, p: s.PolicySetParams) -> s.PolicySetResult:
        self._maybe_crash("policy_set")
        if p.policy is None:
            raise ServiceError("invalid", "signed acts are not handled here")
        coop = p.policy.coop_id
        versions = self.history.setdefault(coop, [])
        h = p.policy.content_hash()
        cur = self.current.get(coop)
        if cur is not None and cur.content_hash == h:
            return s.PolicySetResult(coop_id=coop, version=cur.version, content_hash=h, changed=False)
        record = s.PolicyRecord(
            coop_id=coop, version=len(versions) + 1, content_hash=h, policy=p.policy,
            set_by=NODE_DID, set_at_ms=self._tick(), governed=False,
        )
        versions.append(record)
        self.current[coop] = record
        return s.PolicySetResult(coop_id=coop, version=record.version, content_hash=h)

    def _require(self, coop: str) -> s.PolicyRecord:
        if coop not in self.current:
            raise ServiceError("not_found", f"no policy for coop {coop!r}", {"coop_id": coop})
        return self.current[coop]

    async def policy_get(self, p: s.PolicyGetParams) -> s.PolicyRecord:
        if p.version is None:
            return self._require(p.coop_id)
        for record in self.history.get(p.coop_id, []):
            if record.version == p.version:
                return record
        raise ServiceError("not_found", f"coop {p.coop_id!r} has no version {p.version}")

    async def policy_list(self, p: s.NoParams) -> s.PolicyListResult:
        return s.PolicyListResult(policies=[
            s.policy_summary(c, r.version, r.policy) for c, r in sorted(self.current.items())
        ])

    async def policy_remove(self, p: s.PolicyRemoveParams) -> s.PolicyRemoveResult:
        removed = self.current.pop(p.coop_id, None) is not None
        return s.PolicyRemoveResult(coop_id=p.coop_id, removed=removed)

    async def policy_history(self, p: s.PolicyHistoryParams) -> s.PolicyHistoryResult:
        if p.coop_id not in self.history:
            raise ServiceError("not_found", f"no policy history for coop {p.coop_id!r}")
        versions = [
            s.PolicyVersionInfo(version=r.version, content_hash=r.content_hash, set_by=r.set_by,
                                set_at_ms=r.set_at_ms, governed=r.governed)
            for r in self.history[p.coop_id]
        ][-p.limit:]
        return s.PolicyHistoryResult(coop_id=p.coop_id, versions=versions)

    def _decide(self, policy: CoopSchedulingPolicy, member: str, priority: TaskPriority) -> PolicyDecision:
        quota = policy.quota_for(member)
        violations = []
        if priority > quota.max_priority:
            violations.append(Violation(
                rule="quota.max_priority", member=member, reason=f"priority {priority} above {quota.max_priority}",
                observed=str(priority), limit=str(quota.max_priority), remedy=f"submit at {quota.max_priority}",
            ))
        return PolicyDecision(
            decision="reject" if violations else "allow", adjusted_priority=priority,
            submitted_priority=priority, violations=violations, coop_id=policy.coop_id,
            member=member, evaluated_at_ms=self.now_ms, policy_hash=policy.content_hash(),
        )

    async def policy_check(self, p: s.PolicyCheckParams) -> s.PolicyCheckResult:
        record = None if p.policy is not None else self._require(p.coop_id)
        policy = p.policy or record.policy
        return s.PolicyCheckResult(
            decision=self._decide(policy, p.member, p.priority),
            usage=self._usage(p.coop_id, p.member),
            policy_version=record.version if record else None,
        )

    # --- quota ------------------------------------------------------------

    def _usage(self, coop: str, member: str) -> MemberUsage:
        return self.usage.get((coop, member), MemberUsage(coop_id=coop, member=member, month=MONTH))

    async def quota_usage(self, p: s.QuotaUsageParams) -> s.QuotaUsageResult:
        record = self.current.get(p.coop_id)
        return s.QuotaUsageResult(
            usage=self._usage(p.coop_id, p.member),
            quota=record.policy.quota_for(p.member) if record else None,
        )

    async def quota_list(self, p: s.QuotaListParams) -> s.QuotaListResult:
        record = self.current.get(p.coop_id)
        members = [
            s.QuotaUsageResult(usage=u, quota=record.policy.quota_for(m) if record else None)
            for (c, m), u in sorted(self.usage.items()) if c == p.coop_id
        ]
        return s.QuotaListResult(coop_id=p.coop_id, month=p.month or MONTH, members=members)

    # --- compute ----------------------------------------------------------

    async def compute_submit(self, p: s.ComputeSubmitParams) -> s.ComputeSubmitResult:
        if not self.compute_available:
            raise unavailable("compute")
        record = self._require(p.coop_id)
        member = p.submitter or NODE_DID
        decision = self._decide(record.policy, member, p.priority)
        task_id = f"task-{len(self.tasks) + 1}"
        self.decisions[task_id] = decision
        if not decision.allowed:
            raise ServiceError(
                "policy_rejected", f"rejected by {p.coop_id} policy: {decision.summary()}",
                {"decision": decision.model_dump(mode="json")},
            )
        now = self._tick()
        self.tasks[task_id] = s.TaskStatus(
            task_id=task_id, coop_id=p.coop_id, submitter=member, state="pending",
            priority=p.priority, submitted_at_ms=now, updated_at_ms=now,
        )
        u = self._usage(p.coop_id, member)
        self.usage[(p.coop_id, member)] = u.model_copy(update={"concurrent_tasks": u.concurrent_tasks + 1})
        return s.ComputeSubmitResult(task_id=task_id, state="pending", decision=decision)

    def _task(self, task_id: str) -> s.TaskStatus:
        if not self.compute_available:
            raise unavailable("compute")
        if task_id not in self.tasks:
            raise ServiceError("not_found", f"no task {task_id!r}", {"task_id": task_id})
        return self.tasks[task_id]

    async def compute_status(self, p: s.TaskIdParams) -> s.TaskStatus:
        task = self._task(p.task_id)
        if task.state in PIPELINE[:-1]:
            nxt = PIPELINE[PIPELINE.index(task.state) + 1]
            update: dict[str, Any] = {"state": nxt, "updated_at_ms": self._tick()}
            if nxt == "running":
                update["executor"] = PEER_DID
            if nxt == "completed":
                update.update(result=[42], fuel_used=1234, cpu_ms=7)
            self.tasks[p.task_id] = task = task.model_copy(update=update)
        return task

    async def compute_cancel(self, p: s.ComputeCancelParams) -> s.ComputeCancelResult:
        task = self._task(p.task_id)
        if task.terminal:
            return s.ComputeCancelResult(task_id=p.task_id, cancelled=False, state=task.state)
        self.tasks[p.task_id] = task.model_copy(update={"state": "cancelled", "error": p.reason})
        return s.ComputeCancelResult(task_id=p.task_id, cancelled=True, state="cancelled")

    async def compute_list(self, p: s.ComputeListParams) -> s.ComputeListResult:
        if not self.compute_available:
            raise unavailable("compute")
        tasks = [t for t in self.tasks.values()
                 if (p.coop_id is None or t.coop_id == p.coop_id) and (p.state is None or t.state == p.state)]
        return s.ComputeListResult(tasks=tasks[: p.limit])

    async def compute_explain(self, p: s.TaskIdParams) -> s.ComputeExplainResult:
        task = self._task(p.task_id)
        return s.ComputeExplainResult(
            task_id=p.task_id, state=task.state, decision=self.decisions.get(p.task_id),
            offers=[
                s.OfferScore(executor=PEER_DID, feasible=True, score=0.8125,
                             breakdown={"trust": 0.2, "capacity": 0.2, "queue": 0.15, "rtt": 0.1125,
                                        "locality": 0.15, "hints": 0.0}),
                s.OfferScore(executor="did:icn:compromised", feasible=False,
                             reasons=["blacklisted by ExecutorFilter"]),
            ],
            chosen=task.executor,
        )

    # --- mesh and node ----------------------------------------------------

    async def mesh_peers(self, p: s.NoParams) -> s.MeshPeersResult:
        self._maybe_crash("mesh_peers")
        return s.MeshPeersResult(peers=self.peers)

    async def node_info(self, p: s.NoParams) -> s.NodeInfo:
        return s.NodeInfo(
            did=NODE_DID, peer_id=PEER_ID,
            listen_addrs=[f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER_ID}"],
            version="0.1.0", coops=sorted(self.current), region="eu-central",
            capabilities={"encryption": "1.2"}, peers=len(self.peers), uptime_s=12.5,
            policy_versions={c: r.version for c, r in self.current.items()},
        )

    async def health(self) -> s.Health:
        if not self.healthy:
            raise RuntimeError("store closed")
        return s.Health(ok=True, did=NODE_DID, peers=len(self.peers))


TOKEN = "test-token-0123456789"


class ServerThread:
    """Serve a ``MemoryService`` on 127.0.0.1:0 from a thread with its own trio loop."""

    def __init__(self, service: MemoryService | None = None, token: str = TOKEN) -> None:
        self.service = service or MemoryService()
        self.token = token
        self.bound: BoundAddress | None = None
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        app = ApiApp(Dispatcher(self.service, token=self.token))
        with trio.CancelScope() as scope:
            self._cancel = scope
            async with trio.open_nursery() as nursery:
                self.bound = await nursery.start(serve, app, "127.0.0.1", 0)
                self._ready.set()

    @property
    def url(self) -> str:
        assert self.bound is not None
        return self.bound.url

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None and self._cancel is not None:
            trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
        self._thread.join(10)
