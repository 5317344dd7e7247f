"""From raw observations to the report's figures (plain JSON, what assertions read)."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from icn_p2p.core.policy import CoopSchedulingPolicy

from .assertions import evaluate
from .engine import Observations, TaskObs, percentile

FINAL = ("completed", "failed", "expired", "cancelled", "rejected")
ADMITTED = ("admitted", "waiting", "placed", "running", "completed", "failed", "expired", "cancelled")


def _r(v: float | None, nd: int = 3) -> float | None:
    return None if v is None else round(v, nd)


def propagation(obs: Observations) -> dict[str, Any]:
    """Publish -> each other live node holds that version (or a later one)."""
    alive_at_end = {n["index"] for n in obs.nodes}
    delays: list[float] = []
    expected = reached = 0
    per_publish = []
    for p in obs.publishes:
        if not p.accepted or p.version is None:
            continue
        mine = []
        for i in alive_at_end:
            if i == p.node:
                continue
            expected += 1
            seen = [t for (c, v, t) in obs.policy_seen.get(i, []) if c == p.coop and v >= p.version]
            if seen:
                reached += 1
                d = max(0.0, (min(seen) - p.t_ns) / 1e6)
                delays.append(d)
                mine.append(d)
        per_publish.append({"coop": p.coop, "version": p.version, "node": p.node,
                            "reached": len(mine), "of": len(alive_at_end) - 1,
                            "max_ms": _r(max(mine)) if mine else None})
    return {
        "publishes": len(per_publish),
        "p50_ms": _r(percentile(delays, 50)), "p99_ms": _r(percentile(delays, 99)),
        "max_ms": _r(max(delays)) if delays else None,
        "reached_fraction": _r(reached / expected, 4) if expected else None,
        "delays_ms": [_r(d) for d in sorted(delays)],
        "per_publish": per_publish,
    }


def _group(tasks: list[TaskObs], regions: dict[str, str | None], names: dict[str, str],
           executors: list[str]) -> dict[str, Any]:
    states = Counter(t.state for t in tasks)
    lat = [t.latency_ms for t in tasks if t.state == "completed" and t.latency_ms is not None]
    rejected_by = Counter(v for t in tasks if t.state == "rejected" for v in (t.violations or ["other"]))
    remedies = [r for t in tasks if t.state == "rejected" for r in t.remedies]
    reasons = [t.reason for t in tasks if t.state == "rejected" and t.reason]
    prios = Counter(t.adjusted_priority for t in tasks if t.adjusted_priority and t.state != "rejected")
    ran = [t for t in tasks if t.state == "completed" and t.executor]
    return {
        "submitted": len(tasks),
        "admitted": sum(states[s] for s in ADMITTED),
        "rejected": states["rejected"],
        "completed": states["completed"],
        "failed": states["failed"],
        "expired": states["expired"],
        "cancelled": states["cancelled"],
        "errors": states["error"],
        "lost": sum(1 for t in tasks if t.state in ADMITTED and t.state not in FINAL),
        "placed_again": sum(1 for t in tasks if t.attempts),
        "latency_p50_ms": _r(percentile(lat, 50)), "latency_p99_ms": _r(percentile(lat, 99)),
        "adjusted_priority": prios.most_common(1)[0][0] if prios else None,
        "rejected_by": dict(rejected_by),
        "remedy": remedies[0] if remedies else None,
        "reason": reasons[0] if reasons else None,
        "by_region": _by(ran, lambda t: regions.get(t.executor) or "none", regions_all=set(regions.values())),
        "by_node": {**{n: 0 for n in executors}, **Counter(names.get(t.executor, t.executor) for t in ran)},
    }


def _by(tasks: list[TaskObs], key, regions_all: set[str | None]) -> dict[str, int]:
    out = {(r or "none"): 0 for r in regions_all}
    for t in tasks:
        out[key(t)] = out.get(key(t), 0) + 1
    return out


def tasks_figures(obs: Observations) -> dict[str, Any]:
    tasks = list(obs.tasks.values())
    regions = {n["did"]: n["region"] for n in obs.nodes}
    names = {n["did"]: n["name"] for n in obs.nodes}
    executors = [n["name"] for n in obs.nodes if "executor" in n["roles"]]
    out = _group(tasks, regions, names, executors)
    done = [t for t in tasks if t.state == "completed" and t.t_final_ns]
    if done:
        first = min(t.t_submit_ns for t in tasks)
        last = max(t.t_final_ns for t in done)
        span = max(1e-3, (last - first) / 1e9)
        out["throughput_per_s"] = _r(len(done) / span, 2)
        out["span_s"] = _r(span, 3)
    else:
        out["throughput_per_s"] = 0.0
        out["span_s"] = 0.0
    by_member: dict[str, list[TaskObs]] = {}
    by_label: dict[str, list[TaskObs]] = {}
    for t in tasks:
        by_member.setdefault(t.member, []).append(t)
        by_label.setdefault(t.label, []).append(t)
    out["by_member"] = {m: _group(ts, regions, names, executors) for m, ts in by_member.items()}
    out["by_label"] = {m: _group(ts, regions, names, executors) for m, ts in by_label.items()}
    out["lost_ids"] = sorted(t.task_id for t in tasks if t.state in ADMITTED and t.state not in FINAL)[:50]
    return out


def quota_figures(obs: Observations) -> tuple[dict[str, Any], dict[str, Any]]:
    """CPU-hours used beyond each member's monthly quota (merged view at the end).

    With ``advance_clock`` a run spans several months; each month is judged
    against its own quota and a member's figure is its worst month.
    """
    per: dict[str, Any] = {}
    worst = {"cpu_hours": 0.0, "percent": 0.0, "coop": None, "member": None, "month": None}
    by_month = obs.usage_by_month or {"": obs.usage}
    for coop in obs.scenario.coops:
        body = coop.load_policy()
        policy = CoopSchedulingPolicy.from_dict(body)
        members = ({m for usage in by_month.values() for m in usage.get(coop.id, {})}
                   | {t.member for t in obs.tasks.values() if t.coop == coop.id})
        per[coop.id] = {}
        for m in sorted(members):
            q = policy.quota_for(m)
            quota_h = float(q.cpu_hours_per_month)
            row: dict[str, Any] | None = None
            for month, usage in by_month.items():
                seen = usage.get(coop.id, {}).get(m, {})
                used_h = seen.get("cpu_ms", 0.0) / 3_600_000
                over = max(0.0, used_h - quota_h)
                pct = (over / quota_h * 100) if quota_h > 0 else (0.0 if over == 0 else float("inf"))
                # the overshoot in tasks' worth: what admission could not know (the
                # CPU of tasks still running), whatever the machine's speed
                per_task_h = used_h / seen["completed"] if seen.get("completed") else 0.0
                tasks = round(over / per_task_h, 2) if per_task_h else 0.0
                if row is None or used_h > row["cpu_hours"]:
                    row = {"quota_cpu_hours": quota_h, "cpu_hours": round(used_h, 9),
                           "overshoot_cpu_hours": round(over, 9), "overshoot_pct": round(pct, 2),
                           "overshoot_tasks": tasks,
                           "quota_tasks": round(quota_h / per_task_h, 2) if per_task_h else None,
                           "max_concurrent_tasks": q.max_concurrent_tasks, "month": month or None}
            per[coop.id][m] = row
            if row["overshoot_cpu_hours"] > worst["cpu_hours"]:
                worst = {"cpu_hours": row["overshoot_cpu_hours"], "percent": row["overshoot_pct"],
                         "coop": coop.id, "member": m, "month": row["month"]}
    return per, worst


def replacement_figures(obs: Observations) -> dict[str, Any]:
    """Kill -> the submitter gives up on the executor -> the task is placed again.

    A task is hit by a kill when its last step before the kill was ``placed``
    or ``running`` on the killed node and its next step other than ``running``
    is not ``completed`` (those results were on their way: ``completed_in_flight``). ``detect`` ends at the submitter's next
    step (the executor declared lost); ``replaced`` at the next ``placed``.
    Times are the submitting node's lifecycle steps against the instant the
    simulator sent the signal.
    """
    detect: list[float] = []
    replaced: list[float] = []
    hits = []
    in_flight = 0
    for k in obs.kills:
        t_k = k["t_ns"] / 1e6
        for t in obs.tasks.values():
            before = [s for s in t.steps if s[1] <= t_k]
            if not before or before[-1][0] not in ("placed", "running") or k["did"] not in (before[-1][2] or ""):
                continue
            after = [s for s in t.steps if s[1] > t_k]
            lost = next((s for s in after if s[0] != "running"), None)
            if lost is not None and lost[0] == "completed":
                # the result left the executor before the signal (perhaps with its
                # acceptance, which the submitter read after the signal too)
                in_flight += 1
                continue
            again = next((s for s in after if s[0] == "placed"), None)
            hit = {"task_id": t.task_id, "node": obs.scenario.node_name(k["node"]),
                   "detect_ms": _r(lost[1] - t_k, 1) if lost else None,
                   "replaced_ms": _r(again[1] - t_k, 1) if again else None,
                   "why": lost[2] if lost else None, "final": t.state,
                   "steps": [[st, _r(ms - t_k, 1), (why or "")[:160]] for st, ms, why in t.steps]}
            hits.append(hit)
            if lost:
                detect.append(lost[1] - t_k)
            if again:
                replaced.append(again[1] - t_k)
    return {"kills": len(obs.kills), "tasks_hit": len(hits), "replaced": len(replaced),
            "completed_in_flight": in_flight,
            "detect_p50_ms": _r(percentile(detect, 50), 1), "detect_max_ms": _r(max(detect), 1) if detect else None,
            "replaced_p50_ms": _r(percentile(replaced, 50), 1),
            "replaced_p99_ms": _r(percentile(replaced, 99), 1),
            "replaced_max_ms": _r(max(replaced), 1) if replaced else None,
            "per_task": hits[:100]}


def node_figures(obs: Observations) -> list[dict[str, Any]]:
    out = []
    for n in obs.nodes:
        row = dict(n)
        s = obs.samples.get(n["index"], [])
        if s:
            wall = max(1e-3, (s[-1][0] - s[0][0]) / 1e9)
            # a restart starts a new process at 0 CPU: add each incarnation's own
            cpu = sum(b[1] - a[1] if b[1] >= a[1] else b[1] for a, b in zip(s, s[1:]))
            row["cpu_s"] = round(cpu, 2)
            row["cpu_pct"] = round(cpu / wall * 100, 1)
            row["rss_mb_max"] = round(max(x[2] for x in s), 1)
        else:
            row["cpu_s"] = row["cpu_pct"] = row["rss_mb_max"] = None
        out.append(row)
    return out


def process_figures(obs: Observations) -> dict[str, Any] | None:
    s = obs.process_samples
    if len(s) < 2:
        return None
    wall = max(1e-3, (s[-1][0] - s[0][0]) / 1e9)
    return {"cpu_s": round(s[-1][1] - s[0][1], 2), "cpu_pct": round((s[-1][1] - s[0][1]) / wall * 100, 1),
            "rss_mb_max": round(max(x[2] for x in s), 1),
            "what": "this process (all nodes when in-process; the simulator alone with processes)"}


def build_report(obs: Observations) -> dict[str, Any]:
    meta = obs.scenario.scenario
    quota, worst = quota_figures(obs)
    conv = [c["ms"] for c in obs.convergence if c["ms"] is not None]
    report: dict[str, Any] = {
        "scenario": {"name": meta.name, "description": meta.description.strip(), "scale": obs.scale,
                     "backend": obs.backend, "kill": obs.kill_semantics, "seed": meta.seed,
                     "topology": meta.topology, "started_at": obs.started_at,
                     "duration_s": round((obs.t_end_ns - obs.t0_ns) / 1e9, 3) if obs.t_end_ns else None,
                     "mesh_ready_ms": _r(obs.mesh_ready_ms, 1),
                     "cpus": os.cpu_count(), "loadavg_start": obs.loadavg[0] if obs.loadavg else None,
                     "loadavg_end": obs.loadavg[-1] if len(obs.loadavg) > 1 else None},
        "node_count": len(obs.nodes),
        "nodes": node_figures(obs),
        "process": process_figures(obs),
        "propagation": propagation(obs),
        "tasks": tasks_figures(obs),
        "usage": obs.usage,
        "usage_by_month": obs.usage_by_month,
        "clock": {"months": obs.months, "advances": obs.clock},
        "replacement": replacement_figures(obs),
        "restarts": obs.restarts,
        "usage_converged": all(obs.usage_converged.values()) if obs.usage_converged else None,
        "usage_convergence_ms": _r(max(conv)) if conv else None,
        "usage_convergence": obs.convergence,
        "quota": quota,
        "quota_overshoot": worst,
        "timeline": obs.events,
        "task_samples": _task_samples(obs),
        "notes": list(obs.notes),
        "errors": list(obs.errors)[:100],
        "error_count": len(obs.errors),
    }
    results = []
    for check in obs.scenario.assertions:
        passed, detail = evaluate(check.expect, report)
        results.append({"name": check.name, "expect": check.expect, "passed": passed, "detail": detail})
    report["assertions"] = results
    report["passed"] = all(r["passed"] for r in results)
    return report


def _task_samples(obs: Observations) -> list[dict[str, Any]]:
    """A few tasks per label and state, for the report's tables."""
    names = {n["did"]: n["name"] for n in obs.nodes}
    seen: Counter = Counter()
    out = []
    for t in obs.tasks.values():
        key = (t.label, t.state)
        if seen[key] >= 2:
            continue
        seen[key] += 1
        out.append({"task_id": t.task_id, "label": t.label, "member": t.member, "state": t.state,
                    "submitted_on": obs.scenario.node_name(t.node),
                    "executor": names.get(t.executor, t.executor), "priority": t.priority,
                    "adjusted_priority": t.adjusted_priority, "tags": t.tags, "utc_hour": t.utc_hour,
                    "latency_ms": _r(t.latency_ms, 1), "reason": (t.reason or "")[:600],
                    "violations": t.violations, "remedies": t.remedies,
                    "steps": [[st, round(ms - t.steps[0][1]), (why or "")[:200]] for st, ms, why in t.steps]
                    if t.state not in ("completed", "rejected") and t.steps else None})
    return out
