"""Play a scenario: start the nodes, wire the topology, run the timeline, observe.

The engine records raw observations (policy arrival times, task outcomes,
usage views, process samples) in a :class:`Observations`; ``figures`` turns
them into the report. Actions run in timeline order; each starts at its
``at`` second or when the previous blocking action ended, whichever is later.
``submit`` streams run in the background, so a kill can land during load.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import trio

from icn_p2p.core.clock import month_key, month_start_ms
from icn_p2p.identity.keys import load_key_file
from icn_p2p.net.gossip import TOPIC_COMPUTE, TOPIC_POLICY
from icn_p2p.node.harness import node_config, topology_edges

from . import schema as sc
from .backends import Handle, InProcessBackend, NodeGone, ProcessBackend
from .modules import parse_module

log = logging.getLogger(__name__)

def now_ns() -> int:
    return time.time_ns()


@dataclass
class Publish:
    coop: str
    version: int | None
    node: int
    t_ns: int
    accepted: bool
    reason: str


@dataclass
class TaskObs:
    task_id: str
    node: int
    member: str
    coop: str
    label: str
    tags: list[str]
    priority: str
    t_submit_ns: int
    state: str
    reason: str | None = None
    violations: list[str] = field(default_factory=list)
    remedies: list[str] = field(default_factory=list)
    adjusted_priority: str | None = None
    executor: str | None = None
    t_final_ns: int | None = None
    latency_ms: float | None = None
    attempts: int = 0
    utc_hour: int | None = None
    steps: list[Any] = field(default_factory=list)  # [state, wall ms, reason] (node clock mapped back)


@dataclass
class Observations:
    """Everything seen during one run (figures are computed from this)."""

    scenario: sc.Scenario
    scale: str
    backend: str
    kill_semantics: str
    started_at: float = 0.0
    t0_ns: int = 0
    t_end_ns: int = 0
    nodes: list[dict[str, Any]] = field(default_factory=list)
    publishes: list[Publish] = field(default_factory=list)
    policy_seen: dict[int, list[tuple[str, int, int]]] = field(default_factory=dict)  # node -> (coop, v, t)
    tasks: dict[str, TaskObs] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    usage: dict[str, dict[str, Any]] = field(default_factory=dict)  # coop -> member -> counters
    usage_converged: dict[str, bool] = field(default_factory=dict)
    convergence: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # timeline as it happened
    samples: dict[int, list[tuple[int, float, float]]] = field(default_factory=dict)  # node -> (t, cpu, rss)
    process_samples: list[tuple[int, float, float]] = field(default_factory=list)
    mesh_ready_ms: float | None = None
    loadavg: list[list[float]] = field(default_factory=list)  # the machine's 1/5/15-min load, start and end
    kills: list[dict[str, Any]] = field(default_factory=list)  # node, did, t_ns (the signal was sent)
    restarts: list[dict[str, Any]] = field(default_factory=list)  # node, t_s, start_ms, link_ms
    clock: list[dict[str, Any]] = field(default_factory=list)  # each advance_clock as it happened
    months: list[str] = field(default_factory=list)  # UTC months the nodes' clock went through
    usage_by_month: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # month -> coop -> member


Narrator = Callable[[str, dict[str, Any]], None]


def _quiet(kind: str, data: dict[str, Any]) -> None:
    pass


class Simulation:
    """One run of one scenario (see the module docstring)."""

    def __init__(self, scenario: sc.Scenario, *, scale: str = "small", in_process: bool = True,
                 narrate: Narrator = _quiet, workdir: Path | None = None) -> None:
        self.sc = scenario
        self.scale = scale
        self.in_process = in_process
        self.narrate = narrate
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"icn-sim-{scenario.scenario.name}-"))
        self.n = scenario.total_nodes
        self.edges = topology_edges(self.n, scenario.scenario.topology, degree=scenario.scenario.degree,
                                    seed=scenario.scenario.seed)
        self.handles: dict[int, Handle] = {}
        self.configs: dict[int, Any] = {}
        self.dids: list[str] = []
        self.partitions: list[tuple[list[int], list[int]]] = []
        self.backend: Any = None
        self.obs = Observations(scenario, scale, "in-process" if in_process else "processes",
                                InProcessBackend.kill_semantics if in_process else ProcessBackend.kill_semantics)
        self.progress = 0.0  # seconds of timeline played
        self._streams_open = 0
        self._submitted_count = 0
        self._rr: dict[int, int] = {}
        self._last_action_ns = 0
        self.offset_ms = 0  # the nodes' clock = wall clock + offset_ms
        self._offsets: list[tuple[int, int]] = [(0, 0)]  # (wall ns from which, offset ms)

    def sim_now_ms(self) -> int:
        """What the nodes' clock reads now."""
        return now_ns() // 1_000_000 + self.offset_ms

    def to_wall_ms(self, node_ms: int) -> int:
        """A time read on the nodes' clock, back on the wall clock the figures use."""
        for since_ns, offset in reversed(self._offsets):
            if (node_ms - offset) * 1_000_000 >= since_ns:
                return node_ms - offset
        return node_ms

    @property
    def timeline_length(self) -> float:
        return max([a.at for a in self.sc.timeline] + [0.0])

    # --- setup ----------------------------------------------------------------------

    def _build_configs(self) -> None:
        base = self.workdir / "nodes"
        for i in range(self.n):
            node_config(base, i)  # creates the key once
        self.dids = [load_key_file(base / f"node{i}" / "node.key").did for i in range(self.n)]
        trust_peers = {}
        for i in range(self.n):
            g, _ = self.sc.group_of(i)
            if g.trust is not None:
                trust_peers[self.dids[i]] = g.trust
        for i in range(self.n):
            g, _ = self.sc.group_of(i)
            compute = dict(g.compute)
            if g.concurrency is not None:
                compute["concurrency"] = g.concurrency
            overrides: dict[str, Any] = {
                **g.config,
                "roles": list(g.roles), "coops": self.sc.coops_of(i), "region": g.region,
                "capabilities": dict(g.capabilities),
                "trust": {"peers": {d: t for d, t in trust_peers.items() if d != self.dids[i]}},
            }
            if compute:
                overrides["compute"] = compute
            if g.mesh:
                overrides["mesh"] = dict(g.mesh)
            self.configs[i] = node_config(base, i, **overrides)
            self.obs.nodes.append({"index": i, "name": self.sc.node_name(i), "group": g.name, "did": self.dids[i],
                                   "region": g.region, "roles": list(g.roles), "coops": self.sc.coops_of(i),
                                   "kills": 0, "restarts": 0})

    async def _start_node(self, i: int) -> None:
        self.handles[i] = await self.backend.start(i, self.configs[i])

    async def _link(self, a: int, b: int, wait: bool = True) -> None:
        """Node b dials node a (persistent link); ``wait=False`` only registers it (a cut
        link: it comes up after the heal)."""
        ha, hb = self.handles.get(a), self.handles.get(b)
        if ha is None or hb is None or not ha.alive or not hb.alive:
            return
        if not wait:
            await self._call_quiet(b, "link", {"addr": ha.addr(), "timeout": 0.0})
            return
        try:
            ok = await hb.call("link", addr=ha.addr(), timeout=15.0)
        except (NodeGone, RuntimeError, trio.TooSlowError) as exc:
            ok = False
            self.obs.errors.append(f"link {b}->{a}: {exc}")
        if not ok:
            self.obs.notes.append(f"link {self.sc.node_name(b)} -> {self.sc.node_name(a)} did not come up in 10 s")

    def neighbours(self, i: int) -> list[int]:
        return [b if a == i else a for a, b in self.edges if i in (a, b)]

    def _peer(self, i: int) -> str:
        return self.handles[i].info["peer_id"]

    async def _wait_mesh(self, timeout: float = 20.0) -> bool:
        started = now_ns()
        with trio.move_on_after(timeout):
            while True:
                ready = True
                for i, h in self.handles.items():
                    if not h.alive:
                        continue
                    peers = [self._peer(j) for j in self.neighbours(i) if self.handles[j].alive]
                    if not peers:
                        continue
                    st = await h.call("mesh_status", peers=peers)
                    need = min(st["connected"], st["degree_low"])
                    if st["mesh"][TOPIC_POLICY] < need or st["mesh"][TOPIC_COMPUTE] < need:
                        ready = False
                        break
                if ready:
                    self.obs.mesh_ready_ms = (now_ns() - started) / 1e6
                    return True
                await trio.sleep(0.05)
        self.obs.notes.append(f"gossip meshes not fully formed after {timeout:.0f} s; the timeline ran anyway")
        return False

    # --- running ----------------------------------------------------------------------

    async def run(self) -> Observations:
        self.obs.started_at = time.time()
        self.obs.loadavg.append([round(x, 2) for x in os.getloadavg()])
        self._build_configs()
        try:
            async with trio.open_nursery() as nursery:
                self.backend = (InProcessBackend(nursery) if self.in_process
                                else ProcessBackend(nursery, self.workdir))
                try:
                    await self._run_in(nursery)
                finally:
                    with trio.CancelScope(shield=True):
                        await self.backend.stop_all()
                    nursery.cancel_scope.cancel()
        finally:
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
        return self.obs

    async def _run_in(self, nursery: trio.Nursery) -> None:
        self.narrate("sim", {"sim": self})
        self.narrate("phase", {"text": f"starting {self.n} nodes ({self.obs.backend})"})
        async with trio.open_nursery() as starter:
            for i in range(self.n):
                starter.start_soon(self._start_node, i)
        self.narrate("phase", {"text": f"linking {len(self.edges)} links ({self.sc.scenario.topology} topology)"})
        async with trio.open_nursery() as linker:
            for a, b in self.edges:
                linker.start_soon(self._link, a, b)
        await self._wait_mesh()
        self.narrate("mesh", {"nodes": self.n, "links": len(self.edges), "ms": self.obs.mesh_ready_ms})
        self.obs.t0_ns = now_ns()
        self.obs.months.append(month_key(self.sim_now_ms()))
        async with trio.open_nursery() as bg:
            bg.start_soon(self._drain_loop)
            bg.start_soon(self._sample_loop)
            async with trio.open_nursery() as streams:
                await self._play(streams)
            await self._drain_tasks(self.sc.scenario.drain_timeout_s)
            await self._drain_events()
            await self._final_convergence()
            await trio.sleep(self.sc.scenario.settle_s)
            await self._collect_statuses()
            self._sample_once()
            bg.cancel_scope.cancel()
        self.obs.t_end_ns = now_ns()
        self.obs.loadavg.append([round(x, 2) for x in os.getloadavg()])

    async def _play(self, streams: trio.Nursery) -> None:
        t0 = trio.current_time()
        for idx, action in enumerate(sorted(self.sc.timeline, key=lambda a: a.at)):
            await trio.sleep_until(t0 + action.at)
            self.progress = action.at
            self.obs.events.append({"t_s": round((now_ns() - self.obs.t0_ns) / 1e9, 3), "action": action.action,
                                    "note": action.note})
            await self._do(idx, action, streams)
            self._last_action_ns = now_ns()

    async def _do(self, idx: int, a: Any, streams: trio.Nursery) -> None:
        if isinstance(a, sc.SetPolicy):
            await self._set_policy(a)
        elif isinstance(a, sc.Submit):
            self._streams_open += 1
            streams.start_soon(self._submit_stream, idx, a)
        elif isinstance(a, sc.Kill):
            targets = self.sc.resolve(a.node)
            if a.pick == "busiest":
                targets = await self._busiest(targets)
            for i in targets:
                await self._kill(i, a.signal)
        elif isinstance(a, sc.Restart):
            async with trio.open_nursery() as n:
                for i in self.sc.resolve(a.node):
                    n.start_soon(self._restart, i)
        elif isinstance(a, sc.Partition):
            await self._partition([self.sc.resolve(g) for g in a.groups])
        elif isinstance(a, sc.Heal):
            await self._heal()
        elif isinstance(a, sc.AdvanceClock):
            await self._advance_clock(a)
        elif isinstance(a, sc.Wait):
            if a.until in ("tasks_done", "settled"):
                while self._streams_open:
                    await trio.sleep(0.05)
                await self._drain_tasks(self.sc.scenario.drain_timeout_s)
            if a.until == "settled":
                await self._settle()
            if a.seconds:
                await trio.sleep(a.seconds)

    # --- actions ----------------------------------------------------------------------

    async def _settle(self, timeout: float = 30.0) -> None:
        """Until every live node's usage view is equal (finished tasks' CPU, released slots)."""
        unfinished = self._unfinished()
        if unfinished:
            self.obs.notes.append(f"wait (settled): {len(unfinished)} task(s) still unfinished after "
                                  f"{self.sc.scenario.drain_timeout_s:.0f} s")
        ms, equal = await self._converge([c.id for c in self.sc.coops], now_ns(), timeout=timeout)
        if not equal:
            self.obs.notes.append(f"wait (settled): usage views still differ after {timeout:.0f} s")
        self.narrate("phase", {"text": f"settled: every task final, usage views equal after {ms or 0:.0f} ms"
                               if equal else "not settled: usage views still differ"})

    async def _advance_clock(self, a: sc.AdvanceClock) -> None:
        lead_ms = int(getattr(self.backend, "ADVANCE_LEAD_S", 0.0) * 1000)
        before = self.sim_now_ms() + lead_ms
        ms = a.amount_ms(before)
        r = await self.backend.advance_clock(ms)
        self.offset_ms = r["offset_ms"]
        self._offsets.append((r["t_ns"], self.offset_ms))
        after = month_key(self.sim_now_ms())
        if after not in self.obs.months:
            self.obs.months.append(after)
        entry = {"t_s": round((r["t_ns"] - self.obs.t0_ns) / 1e9, 3), "by_ms": ms,
                 "by_days": round(ms / 86_400_000, 3), "from_month": month_key(before),
                 "to_month": after, "offset_ms": self.offset_ms, "nodes": r["nodes"],
                 "spread_ms": r["spread_ms"]}
        self.obs.clock.append(entry)
        self.narrate("clock", entry)

    async def _set_policy(self, a: sc.SetPolicy) -> None:
        coop = self.sc.coop(a.coop)
        body = coop.load_policy() if a.policy is None else sc.Coop(
            id=coop.id, policy=a.policy, patch=coop.patch).load_policy()
        body = sc._deep_merge(body, a.patch)
        body["coop_id"], body["governance_domain"] = coop.id, None
        node = self.sc.resolve(a.node if a.node is not None else coop.publisher)[0]
        h = self.handles[node]
        try:
            r = await h.call("set_policy", body=body, reason=a.note or a.action)
        except (NodeGone, RuntimeError) as exc:
            self.obs.errors.append(f"set_policy on {self.sc.node_name(node)}: {exc}")
            return
        self.obs.publishes.append(Publish(coop.id, r["version"], node, r["t_ns"], r["accepted"], r["reason"]))
        self.narrate("publish", {"coop": coop.id, "node": self.sc.node_name(node), "version": r["version"],
                                 "accepted": r["accepted"], "reason": r["reason"], "policy": body})

    def _submitters(self, a: sc.Submit) -> list[int]:
        return [i for i in self.sc.resolve(a.node)
                if "submitter" in self.sc.group_of(i)[0].roles and a.coop in self.sc.coops_of(i)]

    async def _submit_stream(self, idx: int, a: sc.Submit) -> None:
        try:
            nodes = self._submitters(a)
            if not nodes:
                self.obs.errors.append(f"timeline[{idx}]: no submitter node serves {a.coop}")
                return
            module = parse_module(a.module)
            total = a.count if a.count is not None else max(1, int(a.duration * a.rate))
            member = next((m for m in self.sc.members if m.id == a.member), None)
            label = a.label or (member.name if member and member.name else f"submit{idx}")
            interval = 1.0 / a.rate
            start = trio.current_time()
            async with trio.open_nursery() as n:
                for k in range(total):
                    await trio.sleep_until(start + k * interval)
                    node = self._pick(nodes, idx)
                    if node is None:
                        self.obs.errors.append(f"{label}-{k}: no live submitter")
                        continue
                    if a.sequential:
                        await self._submit_one(node, f"{label}-{idx}-{k}", a, module, label)
                    else:
                        n.start_soon(self._submit_one, node, f"{label}-{idx}-{k}", a, module, label)
        finally:
            self._streams_open -= 1

    def _pick(self, nodes: list[int], idx: int) -> int | None:
        for _ in range(len(nodes)):
            k = self._rr.get(idx, 0)
            self._rr[idx] = k + 1
            i = nodes[k % len(nodes)]
            if self.handles[i].alive:
                return i
        return None

    async def _submit_one(self, node: int, task_id: str, a: sc.Submit, module: Any, label: str) -> None:
        task: dict[str, Any] = {
            "id": task_id, "coop_id": a.coop, "submitter": a.member, "priority": a.priority,
            "scope": a.scope, "tags": list(a.tags), "fuel_limit": a.fuel or module.default_fuel,
            "entry": module.entry, "args": list(module.args),
        }
        sim_now = self.sim_now_ms()
        if a.deadline_s is not None:
            task["deadline_ms"] = sim_now + int(a.deadline_s * 1000)
        at_ms = None
        if a.utc_hour is not None:
            day = sim_now // 86_400_000 * 86_400_000
            at_ms = day + a.utc_hour * 3_600_000 + 60_000
            # the node would count the default deadline from at_ms, which may be hours ago
            task.setdefault("deadline_ms", sim_now + 60_000)
        t = now_ns()
        obs = TaskObs(task_id, node, a.member, a.coop, label, list(a.tags), a.priority, t, "submitting",
                      utc_hour=a.utc_hour)
        self.obs.tasks[task_id] = obs
        try:
            r = await self.handles[node].call("submit", task=task, wat=module.wat, at_ms=at_ms)
        except (NodeGone, RuntimeError, trio.TooSlowError) as exc:
            obs.state = "error"
            obs.reason = str(exc)
            self.obs.errors.append(f"submit {task_id}: {exc}")
            return
        obs.t_submit_ns = r.get("t_ns", t)
        obs.state, obs.reason = r["state"], r.get("reason")
        obs.violations, obs.remedies = r.get("violations") or [], r.get("remedies") or []
        obs.adjusted_priority = r.get("adjusted_priority")
        self._submitted_count += 1
        self.narrate("admission", {"task": obs, "node": self.sc.node_name(node)})

    async def _busiest(self, nodes: list[int], wait_s: float = 5.0) -> list[int]:
        """The live node among ``nodes`` running the most tasks (waits for one to run any)."""
        live = [i for i in nodes if self.handles[i].alive]
        best: tuple[int, int] | None = None
        with trio.move_on_after(wait_s):
            while live:
                loads: dict[int, int] = {}
                for i in live:
                    try:
                        loads[i] = (await self.handles[i].call("load", timeout=5))["running"]
                    except (NodeGone, RuntimeError, trio.TooSlowError):
                        continue
                if loads:
                    i = max(loads, key=lambda k: (loads[k], -k))
                    best = (i, loads[i])
                    if loads[i] > 0:
                        break
                await trio.sleep(0.02)
        if best is None:
            return live[:1]
        if best[1] == 0:
            self.obs.notes.append(f"kill (busiest): no node of {[self.sc.node_name(i) for i in nodes]} "
                                  f"ran a task within {wait_s:.0f} s; killed {self.sc.node_name(best[0])} idle")
        return [best[0]]

    async def _kill(self, i: int, sig: str) -> None:
        h = self.handles[i]
        if not h.alive:
            return
        await self._drain_node(i)
        try:
            running = (await h.call("load", timeout=2))["running"]
        except (NodeGone, RuntimeError, trio.TooSlowError):
            running = None
        self.obs.kills.append({"node": i, "did": self.dids[i], "t_ns": now_ns(), "signal": sig, "running": running})
        await self.backend.kill(i, sig)
        self.obs.nodes[i]["kills"] += 1
        self.narrate("kill", {"node": self.sc.node_name(i), "how": self.obs.kill_semantics, "running": running})

    async def _restart(self, i: int) -> None:
        if self.handles[i].alive:
            return
        t = now_ns()
        await self._start_node(i)
        started = now_ns()
        cut: set[int] = set()
        for a, b in self.partitions:  # refuse the other side before dialling anyone
            other = b if i in a else a if i in b else []
            if other:
                cut.update(other)
                await self.handles[i].call("block", peers=[self._peer(j) for j in other])
        async with trio.open_nursery() as n:
            for j in self.neighbours(i):
                n.start_soon(self._link, j, i, j not in cut)
        entry = {"node": self.sc.node_name(i), "t_s": round((t - self.obs.t0_ns) / 1e9, 3),
                 "start_ms": round((started - t) / 1e6, 1), "link_ms": round((now_ns() - started) / 1e6, 1)}
        self.obs.restarts.append(entry)
        self.obs.nodes[i]["restarts"] += 1
        self.narrate("restart", entry)

    async def _partition(self, groups: list[list[int]]) -> None:
        cuts = []
        for gi, a in enumerate(groups):
            for b in groups[gi + 1:]:
                cuts.append((a, b))
        for a, b in cuts:
            async with trio.open_nursery() as n:
                for side, other in ((a, b), (b, a)):
                    peers = [self._peer(j) for j in other]
                    for i in side:
                        if self.handles[i].alive:
                            n.start_soon(self._call_quiet, i, "block", {"peers": peers})
            self.partitions.append((a, b))
        with trio.move_on_after(10):
            for a, b in cuts:
                for i in a:
                    if not self.handles[i].alive:
                        continue
                    while any(await self.handles[i].call("connected", peers=[self._peer(j) for j in b])):
                        await trio.sleep(0.02)
        self.narrate("partition", {"groups": [[self.sc.node_name(i) for i in g] for g in groups]})

    async def _heal(self) -> None:
        t = now_ns()
        for a, b in self.partitions:
            for side, other in ((a, b), (b, a)):
                peers = [self._peer(j) for j in other]
                for i in side:
                    await self._call_quiet(i, "unblock", {"peers": peers})
        self.partitions.clear()
        self.narrate("heal", {})
        coops = [c.id for c in self.sc.coops]
        ms, equal = await self._converge(coops, t, timeout=30.0)
        self.obs.convergence.append({"after": "heal", "ms": ms, "converged": equal})
        self.narrate("converged", {"after": "heal", "ms": ms, "converged": equal})

    async def _call_quiet(self, i: int, op: str, args: dict[str, Any]) -> Any:
        try:
            return await self.handles[i].call(op, **args)
        except (NodeGone, RuntimeError, trio.TooSlowError) as exc:
            self.obs.errors.append(f"{op} on {self.sc.node_name(i)}: {exc}")
            return None

    # --- observing --------------------------------------------------------------------

    async def _fetch_events(self, i: int) -> list[tuple[int, dict[str, Any]]]:
        h = self.handles.get(i)
        if h is None or not h.alive:
            return []
        try:
            return [(i, e) for e in await h.call("events", timeout=10)]
        except (NodeGone, RuntimeError, trio.TooSlowError):
            return []

    def _take_events(self, events: list[tuple[int, dict[str, Any]]]) -> None:
        """Record (and narrate) events in the order they happened, whichever node saw them."""
        for i, e in sorted(events, key=lambda ie: ie[1].get("t_ns", 0)):
            if e["kind"] == "policy":
                self.obs.policy_seen.setdefault(i, []).append((e["coop"], e["version"], e["t_ns"]))
                self.narrate("policy_seen", {"node": self.sc.node_name(i), "index": i, **e})
            elif e["kind"] == "final":
                obs = self.obs.tasks.get(e["task_id"])
                if obs is None:
                    continue
                obs.state, obs.reason, obs.executor = e["state"], e.get("reason"), e.get("executor")
                obs.t_final_ns, obs.latency_ms, obs.attempts = e["t_ns"], e.get("latency_ms"), e.get("attempts", 0)
                self.narrate("final", {"task": obs, "event": e, "executor": self._name_of(obs.executor)})

    async def _drain_node(self, i: int) -> None:
        self._take_events(await self._fetch_events(i))

    def _name_of(self, did: str | None) -> str | None:
        if did is None:
            return None
        try:
            return self.sc.node_name(self.dids.index(did))
        except ValueError:
            return did

    async def _drain_events(self) -> None:
        events: list[tuple[int, dict[str, Any]]] = []

        async def one(i: int) -> None:
            events.extend(await self._fetch_events(i))

        async with trio.open_nursery() as n:
            for i in list(self.handles):
                n.start_soon(one, i)
        self._take_events(events)

    async def _drain_loop(self) -> None:
        while True:
            await self._drain_events()
            await trio.sleep(0.1)

    def _sample_once(self) -> None:
        t = now_ns()
        ps = self.backend.process_sample()
        if ps is not None:
            self.obs.process_samples.append((t, ps.cpu_s, ps.rss_mb))
        for i in self.handles:
            s = self.backend.sample(i)
            if s is not None:
                self.obs.samples.setdefault(i, []).append((t, s.cpu_s, s.rss_mb))

    async def _sample_loop(self) -> None:
        while True:
            self._sample_once()
            await trio.sleep(0.5)

    def _unfinished(self) -> list[TaskObs]:
        return [t for t in self.obs.tasks.values()
                if t.state in ("submitting", "admitted", "waiting", "placed", "running", "submitted")]

    async def _drain_tasks(self, timeout: float) -> None:
        while self._streams_open:
            await trio.sleep(0.05)
        with trio.move_on_after(timeout):
            while self._unfinished():
                await trio.sleep(0.05)

    async def _usage_views(self, coop: str, at_ms: int | None = None) -> dict[int, dict[str, Any]]:
        """Each live node's merged view of ``coop`` for the month holding ``at_ms`` (default: now)."""
        views: dict[int, dict[str, Any]] = {}

        async def one(i: int) -> None:
            try:
                views[i] = (await self.handles[i].call("usage", coops=[coop], at_ms=at_ms))[coop]
            except (NodeGone, RuntimeError, trio.TooSlowError):
                pass

        async with trio.open_nursery() as n:
            for i, h in self.handles.items():
                if h.alive and coop in self.sc.coops_of(i):
                    n.start_soon(one, i)
        return views

    async def _converge(self, coops: list[str], t_ref_ns: int, timeout: float) -> tuple[float | None, bool]:
        """Milliseconds from ``t_ref_ns`` until every live node's view of every member is equal."""
        with trio.move_on_after(timeout):
            while True:
                equal = True
                for coop in coops:
                    views = list((await self._usage_views(coop)).values())
                    if any(v != views[0] for v in views[1:]):
                        equal = False
                        break
                if equal:
                    return max(0.0, (now_ns() - t_ref_ns) / 1e6), True
                await trio.sleep(0.01)
        return None, False

    async def _final_convergence(self) -> None:
        finals = [t.t_final_ns for t in self.obs.tasks.values() if t.t_final_ns]
        t_ref = max(finals + [self._last_action_ns]) if finals else now_ns()
        after = "last task" if finals and max(finals) >= self._last_action_ns else "last action"
        coops = [c.id for c in self.sc.coops]
        ms, equal = await self._converge(coops, t_ref, timeout=30.0)
        self.obs.convergence.append({"after": after, "ms": ms, "converged": equal})
        current = month_key(self.sim_now_ms())
        for month in self.obs.months:
            at_ms = None if month == current else _month_mid_ms(month)
            self.obs.usage_by_month[month] = {}
            for coop in coops:
                views = await self._usage_views(coop, at_ms)
                merged: dict[str, Any] = {}
                for v in views.values():  # after convergence all equal; else the largest view
                    for m, u in v.items():
                        if (m not in merged or u["cpu_ms"] > merged[m]["cpu_ms"]
                                or u["completed"] > merged[m]["completed"]):
                            merged[m] = u
                self.obs.usage_by_month[month][coop] = merged
        self.obs.usage = self.obs.usage_by_month.get(current, {})
        for coop in coops:
            self.obs.usage_converged[coop] = equal
        self.narrate("usage", {"usage": self.obs.usage, "by_month": self.obs.usage_by_month, "month": current,
                               "convergence": self.obs.convergence})

    async def _collect_statuses(self) -> None:
        by_node: dict[int, list[str]] = {}
        for t in self.obs.tasks.values():
            if t.state != "error":
                by_node.setdefault(t.node, []).append(t.task_id)
        for i, ids in by_node.items():
            h = self.handles.get(i)
            if h is None or not h.alive:
                continue
            for k in range(0, len(ids), 200):
                try:
                    got = await h.call("statuses", ids=ids[k:k + 200], timeout=30)
                except (NodeGone, RuntimeError, trio.TooSlowError):
                    continue
                for tid, view in got.items():
                    if view is None:
                        continue
                    t = self.obs.tasks[tid]
                    t.state, t.reason = view["state"], view.get("reason")
                    t.executor = view.get("executor") or t.executor
                    t.attempts = view.get("attempts", t.attempts)
                    t.steps = [[st, self.to_wall_ms(view["created_at_ms"] + rel), why]
                               for st, rel, why in view.get("steps") or []]
                    if view.get("violations"):
                        t.violations = view["violations"]
                    if t.t_final_ns is None and view["state"] in ("completed", "failed", "expired", "cancelled"):
                        t.t_final_ns = self.to_wall_ms(view["updated_at_ms"]) * 1_000_000
                        t.latency_ms = (t.t_final_ns - t.t_submit_ns) / 1e6


def _month_mid_ms(month: str) -> int:
    """A time inside ``month`` ("YYYY-MM"), to ask a node for that month's usage."""
    return month_start_ms(month) + 10 * 86_400_000


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]
