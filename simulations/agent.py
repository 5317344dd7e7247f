"""What the simulator asks of one node, as JSON-in/JSON-out operations.

The same :class:`NodeAgent` serves both backends: in-process it is called
directly, in a child process (``simulations.child``) the calls arrive as JSON
lines. Every operation takes and returns plain JSON values, so the two paths
cannot drift apart.

The agent also watches the node: it timestamps each policy version the first
time the node holds it (a gossip hook plus a poll, which catches versions that
arrive by sync) and each task it submitted when the task reaches a final state.
Those observations are queued as events the simulator drains.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import trio
from libp2p.peer.id import ID

from icn_p2p.core.clock import OffsetClock
from icn_p2p.core.task import ComputeTask
from icn_p2p.net.gossip import TOPIC_COMPUTE, TOPIC_POLICY, Delivery, usage_topic
from icn_p2p.node.compute import SubmitError
from icn_p2p.node.config import NodeConfig
from icn_p2p.node.lifecycle import TaskRecord
from icn_p2p.node.node import Node
from icn_p2p.node.sources import POLICY_ACT

from . import procstat

log = logging.getLogger(__name__)

POLL_S = 0.05


def now_ns() -> int:
    return time.time_ns()


def usage_view(u: Any) -> dict[str, Any]:
    return {"cpu_ms": round(u.cpu_hours_this_month * 3_600_000, 3), "concurrent": u.concurrent_tasks,
            "completed": u.tasks_completed_this_month, "credits_spent": u.credits_spent_this_month,
            "fuel": u.fuel_this_month}


def record_view(r: TaskRecord) -> dict[str, Any]:
    violations = [v.get("rule") for v in ((r.decision or {}).get("violations") or [])]
    remedies = [v.get("remedy") for v in ((r.decision or {}).get("violations") or []) if v.get("remedy")]
    return {"task_id": r.task_id, "state": r.state.value, "reason": r.reason, "executor": r.executor,
            "attempts": r.attempts, "adjusted_priority": r.adjusted_priority, "violations": violations,
            "remedies": remedies, "policy_version": r.policy_version,
            "created_at_ms": r.created_at_ms, "updated_at_ms": r.updated_at_ms,
            "steps": [[e.state.value, e.at_ms - r.created_at_ms, e.reason] for e in r.events]}


class NodeAgent:
    """Operations on one running node (see the module docstring)."""

    def __init__(self, node: Node, clock: OffsetClock) -> None:
        self.node = node
        self.clock = clock
        self.events: list[dict[str, Any]] = []
        self._seen: dict[str, int] = {}  # coop -> highest version already reported
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()
        node.handle(POLICY_ACT, self._on_act)

    # --- running ------------------------------------------------------------------

    @classmethod
    async def serve(cls, config: NodeConfig, *, clock: OffsetClock | None = None,
                    task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run a node and its agent until :meth:`stop`; ``task_status.started(agent)``.

        ``clock`` is the node's clock: in-process nodes share one, a child
        process has its own (advanced by :meth:`op_advance_clock`).
        """
        clock = clock if clock is not None else OffsetClock()
        node = Node(config, clock=clock)
        agent = cls(node, clock)
        async with trio.open_nursery() as outer:
            await outer.start(node.run)
            try:
                async with trio.open_nursery() as inner:
                    agent._nursery = inner
                    inner.start_soon(agent._poll)
                    task_status.started(agent)
                    await agent._stop.wait()
                    inner.cancel_scope.cancel()
            finally:
                node.stop()

    def stop(self) -> None:
        self._stop.set()
        self.node.stop()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    async def _poll(self) -> None:
        while True:
            self._check_heads()
            await trio.sleep(POLL_S)

    async def _on_act(self, delivery: Delivery) -> None:
        self._check_heads()

    def _check_heads(self) -> None:
        t = now_ns()
        for coop, head in self.node.policy_heads().items():
            if head.version > self._seen.get(coop, 0):
                self._seen[coop] = head.version
                self.events.append({"kind": "policy", "coop": coop, "version": head.version, "t_ns": t})

    # --- dispatch -----------------------------------------------------------------

    async def call(self, op: str, args: dict[str, Any]) -> Any:
        fn = getattr(self, f"op_{op}", None)
        if fn is None:
            raise ValueError(f"unknown operation {op!r}")
        return await fn(**args)

    async def op_info(self) -> dict[str, Any]:
        cfg = self.node.config
        return {"did": self.node.did, "peer_id": self.node.peer_id.to_base58(), "addrs": self.node.listen_addrs(),
                "region": cfg.region, "roles": list(cfg.roles), "coops": list(cfg.coops)}

    async def op_link(self, addr: str, timeout: float = 10.0) -> bool:
        peer = self.node.host.add_persistent_peer(addr)
        with trio.move_on_after(timeout):
            while not self.node.host.is_connected(peer):
                await trio.sleep(0.01)
            return True
        return False

    async def op_mesh_status(self, peers: list[str]) -> dict[str, Any]:
        """How many of ``peers`` are connected and in this node's gossip meshes."""
        ids = [ID.from_base58(p) for p in peers]
        up = {p for p in ids if self.node.host.is_connected(p)}
        topics = [TOPIC_POLICY, TOPIC_COMPUTE] + [usage_topic(c) for c in self.node.config.coops]
        return {"connected": len(up),
                "mesh": {t: len(self.node.gossip.mesh_peers(t) & up) for t in topics},
                "degree_low": self.node.gossip.settings.degree_low}

    async def op_block(self, peers: list[str]) -> None:
        for p in peers:
            await self.node.host.block(ID.from_base58(p))

    async def op_unblock(self, peers: list[str]) -> None:
        for p in peers:
            self.node.host.unblock(ID.from_base58(p))

    async def op_connected(self, peers: list[str]) -> list[bool]:
        return [self.node.host.is_connected(ID.from_base58(p)) for p in peers]

    async def op_set_policy(self, body: dict[str, Any], reason: str = "") -> dict[str, Any]:
        t = now_ns()
        result = await self.node.set_local_policy(body, reason=reason)
        head = self.node.policy_heads().get(body["coop_id"])
        self._check_heads()
        return {"accepted": result.accepted, "reason": str(result.reason), "t_ns": t,
                "version": head.version if head else None}

    async def op_submit(self, task: dict[str, Any], wat: str, at_ms: int | None = None) -> dict[str, Any]:
        t = now_ns()
        try:
            record = await self.node.compute.submit(ComputeTask.model_validate(task), wat.encode(), at_ms=at_ms)
        except SubmitError as exc:
            return {"task_id": task["id"], "state": "error", "reason": f"{exc.reason}: {exc}", "t_ns": t,
                    "violations": [], "remedies": []}
        view = record_view(record)
        view["t_ns"] = t
        if not record.state.final:
            self._nursery.start_soon(self._wait_final, record.task_id, t)
        return view

    async def _wait_final(self, task_id: str, t_submit: int) -> None:
        record = await self.node.compute.wait(task_id, timeout=None)
        t = now_ns()
        if record is None or not record.state.final:
            return
        view = record_view(record)
        view.update(kind="final", t_ns=t, latency_ms=(t - t_submit) / 1e6)
        try:
            explained = self.node.compute.explain(task_id)
        except Exception:  # explanation is decoration: never lose the event for it
            explained = None
        if explained and explained.get("winner"):
            view["offers"] = len(explained.get("offers") or [])
            win = [o for o in explained["offers"] if o["executor"] == explained["winner"]]
            view["score"] = win[0]["score"] if win else None
        self.events.append(view)

    async def op_events(self) -> list[dict[str, Any]]:
        self._check_heads()
        out, self.events = self.events, []
        return out

    async def op_statuses(self, ids: list[str]) -> dict[str, Any]:
        out = {}
        for task_id in ids:
            record = await self.node.compute.status(task_id)
            out[task_id] = None if record is None else record_view(record)
        return out

    async def op_usage(self, coops: list[str] | None = None, at_ms: int | None = None) -> dict[str, dict[str, Any]]:
        """{coop: {member: counters}} as this node's merged view holds them now, for the
        month holding ``at_ms`` on the node's clock (default: the current month)."""
        store = self.node.usage_store
        out: dict[str, dict[str, Any]] = {}
        for coop in coops if coops is not None else self.node.config.coops:
            out[coop] = {m: usage_view(store.member_usage(coop, m, now_ms=at_ms))
                         for m in store.members(coop, now_ms=at_ms)}
        return out

    async def op_clock(self) -> dict[str, Any]:
        return {"now_ms": self.clock.now_ms(), "offset_ms": self.clock.offset_ms, "t_ns": now_ns()}

    async def op_advance_clock(self, ms: int, at_ns: int | None = None) -> dict[str, Any]:
        """Move this node's clock ``ms`` ahead, at wall time ``at_ns`` when given.

        Envelopes carry timestamps checked against a skew bound, so every node
        of a mesh must jump together: the simulator sends one ``at_ns`` to all
        of them and each sleeps until that instant (one machine, one wall clock).
        """
        if at_ns is not None:
            await trio.sleep(max(0.0, (at_ns - now_ns()) / 1e9))
        t = now_ns()
        self.clock.advance(int(ms))
        return {"now_ms": self.clock.now_ms(), "offset_ms": self.clock.offset_ms, "t_ns": t}

    async def op_load(self) -> dict[str, int]:
        """Tasks this node is executing now, and queued behind them."""
        q = self.node.compute.queue
        return {"running": q.running, "queued": q.queue_depth}

    async def op_stats(self) -> dict[str, Any]:
        s = procstat.sample()
        return {"cpu_s": s.cpu_s if s else None, "rss_mb": s.rss_mb if s else None,
                "hwm_mb": s.hwm_mb if s else None}

    async def op_heads(self) -> dict[str, int]:
        """{coop: policy version} held here."""
        return {coop: head.version for coop, head in self.node.policy_heads().items()}

    async def op_run_tasks(self, coop: str, count: int, concurrency: int, wat: str, entry: str,
                           args: list[int], fuel: int, prefix: str, members: int = 50) -> dict[str, Any]:
        """Submit ``count`` tasks here, ``concurrency`` in flight, each waited to its end.

        Timed inside the submitting node, so the figures carry no cost of the
        request that asked for them (used by ``benchmarks/tasks.py --processes``).
        """
        latencies: list[float] = []
        outcomes: dict[str, int] = {}
        limiter = trio.Semaphore(concurrency)
        module = wat.encode()

        async def one(i: int) -> None:
            async with limiter:
                task = ComputeTask(id=f"{prefix}{i}", coop_id=coop, submitter=f"did:icn:m{i % members}",
                                   entry=entry, args=list(args), fuel_limit=fuel)
                started = time.perf_counter()
                await self.node.compute.submit(task, module)
                record = await self.node.compute.wait(task.id, timeout=60)
                state = record.state.value if record is not None else "missing"
                outcomes[state] = outcomes.get(state, 0) + 1
                if state == "completed":
                    latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, i)
        return {"latencies_ms": latencies, "outcomes": outcomes, "wall_s": time.perf_counter() - started}

    async def op_stop(self) -> None:
        self.stop()
