"""What a person watching ``icn-sim run`` sees: the run told as it happens.

A few lines per kind of event (the first admissions, every rejection reason
once, the first placements), so a run of thousands of tasks stays readable;
the totals come at the end.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import schema as sc

SHOW_PER_LABEL = 3
SHOW_POLICY_NODES = 12


def _member(m: str) -> str:
    return m.removeprefix("did:icn:")


def _policy_summary(body: dict[str, Any]) -> str:
    q = body.get("default_quota", {})
    parts = [f"default quota {q.get('cpu_hours_per_month')} CPU-h/month, {q.get('max_concurrent_tasks')} "
             f"concurrent, up to {q.get('max_priority')} priority"]
    if body.get("member_quotas"):
        parts.append(f"{len(body['member_quotas'])} member quota(s)")
    rules = [next(iter(r)) for r in body.get("rules", [])]
    if rules:
        parts.append("rules: " + ", ".join(rules))
    return "; ".join(parts)


class Narrator:
    """Callable ``(kind, data)`` the engine reports to."""

    def __init__(self, console: Console, scenario: sc.Scenario) -> None:
        self.console = console
        self.sc = scenario
        self.sim: Any = None
        self.shown: Counter = Counter()
        self.reasons_shown: set[tuple[str, str]] = set()
        self.policy_reached: Counter = Counter()
        self.publish_t: dict[tuple[str, int], int] = {}

    def print(self, text: str) -> None:
        self.console.print(text)

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        fn = getattr(self, f"on_{kind}", None)
        if fn is not None:
            fn(data)

    def on_sim(self, d: dict[str, Any]) -> None:
        self.sim = d["sim"]
        meta = self.sc.scenario
        self.print(f"[bold]icn-sim: {meta.name}[/bold] ({self.sim.scale} scale)")
        if meta.description:
            self.print(meta.description.strip())
        for line in meta.narrate:
            self.print(f"  {line}")

    def on_phase(self, d: dict[str, Any]) -> None:
        self.print(f"[dim]{d['text']}[/dim]")

    def on_mesh(self, d: dict[str, Any]) -> None:
        ms = d.get("ms")
        self.print(f"mesh up: {d['nodes']} nodes, {d['links']} links"
                   + (f", gossip meshes formed in {ms:.0f} ms" if ms is not None else ""))
        groups = ", ".join(f"{g.name} x{g.count}" + (f" ({g.region})" if g.region else "") for g in self.sc.nodes)
        self.print(f"[dim]  nodes: {groups}[/dim]")

    def on_publish(self, d: dict[str, Any]) -> None:
        if not d["accepted"]:
            self.print(f"[red]{d['node']}: policy for {d['coop']} refused: {d['reason']}[/red]")
            return
        self.publish_t[(d["coop"], d["version"])] = 0
        self.print(f"\n[bold]policy[/bold] {d['node']} publishes {d['coop']} v{d['version']}: "
                   f"{_policy_summary(d['policy'])}")

    def on_policy_seen(self, d: dict[str, Any]) -> None:
        if self.sim is None:
            return
        pub = next((p for p in reversed(self.sim.obs.publishes)
                    if p.coop == d["coop"] and p.version is not None and d["version"] >= p.version), None)
        if pub is None or d["index"] == pub.node:
            return
        key = (pub.coop, pub.version)
        self.policy_reached[key] += 1
        n = self.policy_reached[key]
        total = self.sim.n - 1
        ms = (d["t_ns"] - pub.t_ns) / 1e6
        if n <= SHOW_POLICY_NODES or n == total:
            self.print(f"  policy {pub.coop} v{pub.version} reached {d['node']:<10} +{ms:6.0f} ms  [{n}/{total}]")
        elif n == SHOW_POLICY_NODES + 1:
            self.print("  ...")

    def on_admission(self, d: dict[str, Any]) -> None:
        t = d["task"]
        if t.state == "rejected":
            key = (t.label, ",".join(t.violations))
            self.shown[(t.label, "rejected")] += 1
            if key in self.reasons_shown:
                return
            self.reasons_shown.add(key)
            hour = f" (admission time {t.utc_hour:02d}:01 UTC)" if t.utc_hour is not None else ""
            self.print(f"[red]REJECT[/red] {t.task_id} from {_member(t.member)} on {d['node']}{hour}:")
            for line in (t.reason or "").splitlines():  # escaped: "[quota.max_priority]" is not markup
                self.print(f"[red]    {escape(line)}[/red]")
            return
        if t.state == "error":
            self.print(f"[red]ERROR[/red] {t.task_id}: {escape(t.reason or '')}")
            return
        self.shown[(t.label, "admitted")] += 1
        if self.shown[(t.label, "admitted")] <= SHOW_PER_LABEL:
            prio = t.priority if t.adjusted_priority in (None, t.priority) else f"{t.priority} -> {t.adjusted_priority}"
            tags = f", tags {t.tags}" if t.tags else ""
            self.print(f"[green]admit[/green]  {t.task_id} from {_member(t.member)} on {d['node']} "
                       f"(priority {prio}{tags})")

    def on_final(self, d: dict[str, Any]) -> None:
        t, e = d["task"], d["event"]
        key = (t.label, "final:" + t.state)
        self.shown[key] += 1
        if t.state != "completed":
            if self.shown[key] <= SHOW_PER_LABEL:
                self.print(f"[yellow]{t.state}[/yellow] {t.task_id}: {t.reason}")
            return
        if self.shown[key] <= SHOW_PER_LABEL:
            score = f", score {e['score']:.2f} of {e.get('offers')} offers" if e.get("score") is not None else ""
            again = f", after {t.attempts} failed attempt(s)" if t.attempts else ""
            self.print(f"[cyan]ran[/cyan]    {t.task_id} on {d['executor']}{score}{again}: "
                       f"{t.latency_ms:.0f} ms submit -> result")

    def on_kill(self, d: dict[str, Any]) -> None:
        busy = f", running {d['running']} task(s)" if d.get("running") else ""
        self.print(f"[magenta]kill[/magenta] {d['node']} ({d['how']}{busy})")

    def on_restart(self, d: dict[str, Any]) -> None:
        took = (f" (process up in {d['start_ms'] / 1000:.1f} s, links in {d['link_ms'] / 1000:.1f} s)"
                if "start_ms" in d else "")
        self.print(f"[magenta]restart[/magenta] {d['node']}{took}")

    def on_partition(self, d: dict[str, Any]) -> None:
        self.print("[magenta]partition[/magenta] " + " | ".join(", ".join(g) for g in d["groups"]))

    def on_heal(self, d: dict[str, Any]) -> None:
        self.print("[magenta]heal[/magenta] links restored")

    def on_converged(self, d: dict[str, Any]) -> None:
        if d["converged"]:
            self.print(f"  usage views equal on every node {d['ms']:.0f} ms after {d['after']}")
        else:
            self.print(f"[red]  usage views still differ 30 s after {d['after']}[/red]")

    def on_note(self, d: dict[str, Any]) -> None:
        self.print(f"[yellow]note[/yellow] {d['text']}")

    def on_clock(self, d: dict[str, Any]) -> None:
        spread = f", all within {d['spread_ms']:.1f} ms" if d.get("spread_ms") else ""
        turn = (f"{d['from_month']} -> {d['to_month']}: a new month, a new usage key, the monthly quotas start again"
                if d["to_month"] != d["from_month"] else f"still {d['to_month']}")
        self.print(f"\n[bold]clock[/bold] every node's clock moves {d['by_days']:.2f} days ahead "
                   f"({d['nodes']} nodes{spread}); {turn}")

    def on_usage(self, d: dict[str, Any]) -> None:
        by_month = d.get("by_month") or {"": d["usage"]}
        for month, usage in by_month.items():
            when = "this month" if len(by_month) == 1 else month + (", now" if month == d.get("month") else "")
            for coop, members in usage.items():
                table = Table(title=f"usage in {coop}, {when} (merged view)", box=None)
                for col in ("member", "tasks completed", "running", "CPU ms", "fuel"):
                    table.add_column(col, justify="left" if col == "member" else "right")
                for m, u in sorted(members.items()):
                    table.add_row(_member(m), str(u["completed"]), str(u["concurrent"]), f"{u['cpu_ms']:.1f}",
                                  f"{u['fuel']:,}")
                self.console.print()
                self.console.print(table)
        for c in d["convergence"]:
            if c["after"] != "heal":
                self.on_converged(c)

    def summary(self, report: dict[str, Any], out: Path) -> None:
        t, p = report["tasks"], report["propagation"]
        self.print("")
        if p["publishes"]:
            self.print(f"propagation: p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms, max {p['max_ms']} ms, "
                       f"reached {p['reached_fraction']:.0%} of nodes")
        self.print(f"tasks: {t['submitted']} submitted, {t['admitted']} admitted, {t['rejected']} rejected, "
                   f"{t['completed']} completed, {t['failed']} failed, {t['expired']} expired, {t['lost']} lost; "
                   f"latency p50 {t['latency_p50_ms']} ms, p99 {t['latency_p99_ms']} ms")
        rp = report.get("replacement") or {}
        if rp.get("tasks_hit"):
            self.print(f"re-placement after {rp['kills']} kill(s): {rp['tasks_hit']} task(s) hit, "
                       f"{rp['replaced']} placed again; kill -> placed again p50 {rp['replaced_p50_ms']} ms, "
                       f"max {rp['replaced_max_ms']} ms (executor declared lost: p50 {rp['detect_p50_ms']} ms)")
        for a in report["assertions"]:
            mark = "[green]pass[/green]" if a["passed"] else "[red]FAIL[/red]"
            self.print(f"  {mark} {a['name']}  [dim]({a['detail']})[/dim]")
        for note in report["notes"]:
            self.print(f"[yellow]note[/yellow] {note}")
        verdict = "[green]passed[/green]" if report["passed"] else "[red]FAILED[/red]"
        self.print(f"\n{report['scenario']['name']}: {verdict}. Report: {out}/report.md "
                   f"(+ report.json, {len(report.get('plots', []))} plots)")
