"""Write a run's report: report.json (figures), report.md (readable) and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .engine import Observations

FIG_SIZE = (8, 5)  # inches, at 100 dpi: 800x500 pixels
DPI = 100


def write_json(report: dict[str, Any], out: Path) -> Path:
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
    return path


# --- plots -----------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_propagation(report: dict[str, Any], out: Path) -> str | None:
    delays = report["propagation"]["delays_ms"]
    if not delays:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=FIG_SIZE, dpi=DPI)
    ys = [(i + 1) / len(delays) for i in range(len(delays))]
    ax.step(delays, ys, where="post")
    p = report["propagation"]
    for q, style in (("p50_ms", "--"), ("p99_ms", ":")):
        if p[q] is not None:
            ax.axvline(p[q], linestyle=style, color="grey", label=f"{q[:-3]} {p[q]:.0f} ms")
    ax.set_xlabel("publish -> node holds the policy (ms)")
    ax.set_ylabel("fraction of (node, publish) pairs")
    ax.set_title(f"Policy propagation, {report['node_count']} nodes ({report['scenario']['backend']})")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    name = "propagation_cdf.png"
    fig.savefig(out / name)
    plt.close(fig)
    return name


def plot_tasks(report: dict[str, Any], out: Path) -> str | None:
    labels = report["tasks"]["by_label"]
    if not labels:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=FIG_SIZE, dpi=DPI)
    names = list(labels)
    bottom = [0] * len(names)
    colours = {"completed": "#2a9d8f", "rejected": "#e76f51", "failed": "#b5179e", "expired": "#f4a261",
               "cancelled": "#8d99ae", "lost": "#000000", "errors": "#6c757d"}
    for state, colour in colours.items():
        vals = [labels[n][state] for n in names]
        if any(vals):
            ax.bar(names, vals, bottom=bottom, label=state, color=colour)
            bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("tasks")
    ax.set_title("Task outcomes by submission stream")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    plt.setp(ax.get_xticklabels(), rotation=15, ha="right")
    fig.tight_layout()
    name = "tasks.png"
    fig.savefig(out / name)
    plt.close(fig)
    return name


def plot_latency(obs: Observations, out: Path) -> str | None:
    by: dict[str, list[float]] = {}
    for t in obs.tasks.values():
        if t.state == "completed" and t.latency_ms is not None:
            by.setdefault(t.label, []).append(t.latency_ms)
    if not by:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=FIG_SIZE, dpi=DPI)
    for label, vals in sorted(by.items()):
        vals = sorted(vals)
        ax.step(vals, [(i + 1) / len(vals) for i in range(len(vals))], where="post", label=f"{label} (n={len(vals)})")
    ax.set_xscale("log")
    ax.set_xlabel("submit -> result (ms, log scale)")
    ax.set_ylabel("fraction of completed tasks")
    ax.set_title("Submit -> result latency (CDF)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
    fig.tight_layout()
    name = "latency_cdf.png"
    fig.savefig(out / name)
    plt.close(fig)
    return name


def plot_timeline(obs: Observations, report: dict[str, Any], out: Path) -> str | None:
    tasks = list(obs.tasks.values())
    if not tasks or not obs.t0_ns:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=FIG_SIZE, dpi=DPI)
    t0 = obs.t0_ns
    sub = sorted((t.t_submit_ns - t0) / 1e9 for t in tasks)
    adm = sorted((t.t_submit_ns - t0) / 1e9 for t in tasks if t.state not in ("rejected", "error"))
    done = sorted((t.t_final_ns - t0) / 1e9 for t in tasks if t.state == "completed" and t.t_final_ns)
    for xs, label in ((sub, "submitted"), (adm, "admitted"), (done, "completed")):
        if xs:
            ax.step(xs, range(1, len(xs) + 1), where="post", label=label)
    for e in report["timeline"]:
        if e["action"] in ("kill", "restart", "partition", "heal", "set_policy", "propose_policy"):
            ax.axvline(e["t_s"], color="grey", alpha=0.5, linestyle="--")
            ax.annotate(e["action"], (e["t_s"], ax.get_ylim()[1] * 0.95), rotation=90, fontsize=8,
                        va="top", ha="right", color="grey")
    ax.set_xlabel("seconds since the mesh was up")
    ax.set_ylabel("tasks (cumulative)")
    ax.set_title("Tasks over time, with timeline actions")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    name = "timeline.png"
    fig.savefig(out / name)
    plt.close(fig)
    return name


def plot_usage(report: dict[str, Any], out: Path) -> str | None:
    rows = [(coop, m, q) for coop, ms in report["quota"].items() for m, q in ms.items()]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=FIG_SIZE, dpi=DPI)
    names = [_short_member(m) for _, m, _ in rows]
    used = [q["cpu_hours"] * 3600 for _, _, q in rows]
    quota = [q["quota_cpu_hours"] * 3600 for _, _, q in rows]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], used, width=0.4, label="CPU used (merged view)", color="#264653")
    finite = [q if q < 3600 * 24 else math.nan for q in quota]
    ax.bar([x + 0.2 for x in xs], finite, width=0.4, label="monthly quota", color="#e9c46a")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("CPU seconds this month")
    if any(q >= 3600 * 24 for q in quota):
        ax.set_title("CPU used per member (quotas of a day or more are not drawn)")
    else:
        ax.set_title("CPU used per member against the monthly quota")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    plt.setp(ax.get_xticklabels(), rotation=15, ha="right")
    fig.tight_layout()
    name = "usage.png"
    fig.savefig(out / name)
    plt.close(fig)
    return name


def _short_member(m: str) -> str:
    return m.removeprefix("did:icn:")


# --- markdown --------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) < 1e-2 and v else f"{v:,.2f}".rstrip("0").rstrip(".") if v % 1 else f"{v:,.0f}"
    return str(v)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(x).replace("|", "\\|").replace("\n", " ") for x in r) + " |")
    return "\n".join(lines)


def write_markdown(report: dict[str, Any], plots: list[str], out: Path, command: str | None = None) -> Path:
    s = report["scenario"]
    p = report["propagation"]
    t = report["tasks"]
    verdict = "PASSED" if report["passed"] else "FAILED"
    md: list[str] = [f"# Scenario `{s['name']}` ({s['scale']} scale): {verdict}", ""]
    if s["description"]:
        md += [s["description"], ""]
    md += [f"{report['node_count']} nodes, {s['backend']}, {s['topology']} topology, seed {s['seed']}; "
           f"the timeline ran {_fmt(s['duration_s'])} s after the mesh was up "
           f"(mesh formed in {_fmt(s['mesh_ready_ms'])} ms). A node kill is: {s['kill']}.", ""]
    if s.get("loadavg_start"):
        md += [f"Machine: {s['cpus']} CPUs; load average (1 min) {s['loadavg_start'][0]} at the start, "
               f"{(s.get('loadavg_end') or ['-'])[0]} at the end (every node and anything else running "
               f"shares these cores).", ""]
    if command:
        md += [f"Command: `{command}`", ""]
    md += ["## Assertions", "", _table(["", "assertion", "expectation", "figures read"],
                                       [["pass" if a["passed"] else "**FAIL**", a["name"], f"`{a['expect']}`",
                                         a["detail"]] for a in report["assertions"]]), ""]
    md += ["## Policy propagation", "",
           "Time from the publishing node's `set_policy` to each other node holding that version "
           "(or a later one), over every publish in the run.", "",
           _table(["publishes", "p50 ms", "p99 ms", "max ms", "reached fraction"],
                  [[p["publishes"], p["p50_ms"], p["p99_ms"], p["max_ms"], p["reached_fraction"]]]), ""]
    md += ["## Tasks", "",
           "*lost* = admitted but never reached a final state by the end of the run.", "",
           _table(["stream", "submitted", "admitted", "rejected", "completed", "failed", "expired", "lost",
                   "p50 ms", "p99 ms", "priority (adjusted)", "rejected by"],
                  [[k, g["submitted"], g["admitted"], g["rejected"], g["completed"], g["failed"], g["expired"],
                    g["lost"], g["latency_p50_ms"], g["latency_p99_ms"], g["adjusted_priority"],
                    ", ".join(f"{r} x{n}" for r, n in g["rejected_by"].items())]
                   for k, g in t["by_label"].items()]
                  + [["**all**", t["submitted"], t["admitted"], t["rejected"], t["completed"], t["failed"],
                      t["expired"], t["lost"], t["latency_p50_ms"], t["latency_p99_ms"], "", ""]]), "",
           f"Throughput: {_fmt(t['throughput_per_s'])} completed tasks/s over {_fmt(t['span_s'])} s.", ""]
    regions = sorted({r for g in t["by_label"].values() for r in g["by_region"]})
    if len(regions) > 1 or (regions and regions[0] != "none"):
        md += ["### Where the tasks ran (completed tasks by executor region)", "",
               _table(["stream", *regions], [[k, *[g["by_region"].get(r, 0) for r in regions]]
                                            for k, g in t["by_label"].items()]), ""]
    rejected = [x for x in report["task_samples"] if x["state"] == "rejected"]
    if rejected:
        md += ["### Rejections (samples, as the submitter received them)", ""]
        for x in rejected[:6]:
            hour = f", admission time {x['utc_hour']:02d}:01 UTC" if x["utc_hour"] is not None else ""
            md += [f"- `{x['task_id']}` ({x['member']}, {x['priority']}{hour}):", "", "  ```",
                   *["  " + line for line in x["reason"].splitlines()], "  ```"]
        md += [""]
    rp = report.get("replacement") or {}
    if rp.get("kills"):
        md += ["### Re-placement after a kill", "",
               "Tasks placed on or running on a node when it was killed: time from the signal to the "
               "submitter declaring the executor lost (*detect*), and to the task being placed on another "
               "executor (*placed again*).", "",
               _table(["kills", "tasks hit", "placed again", "detect p50 ms", "detect max ms",
                       "placed again p50 ms", "p99 ms", "max ms"],
                      [[rp["kills"], rp["tasks_hit"], rp["replaced"], rp["detect_p50_ms"], rp["detect_max_ms"],
                        rp["replaced_p50_ms"], rp["replaced_p99_ms"], rp["replaced_max_ms"]]]), ""]
        whys = sorted({_why(h["why"]) for h in rp["per_task"] if h["why"]})
        if whys:
            md += ["How the submitters noticed: " + "; ".join(f"`{w}`" for w in whys) + ".", ""]
    clock = report.get("clock") or {}
    if clock.get("advances"):
        md += ["## Simulated clock", "",
               "Every node reads one clock: system time plus an offset that only grows. "
               "`advance_clock` moves it for all nodes at one instant.", "",
               _table(["t (s)", "moved by (days)", "from month", "to month", "nodes", "spread ms"],
                      [[c["t_s"], c["by_days"], c["from_month"], c["to_month"], c["nodes"], c["spread_ms"]]
                       for c in clock["advances"]]), ""]
    md += ["## Usage", "",
           f"Usage convergence (ms until every live node's merged view of every member is equal): "
           + "; ".join(f"after {c['after']}: {_fmt(c['ms'])} ms" + ("" if c["converged"] else " (NOT converged)")
                       for c in report["usage_convergence"]) + ".", ""]
    by_month = report.get("usage_by_month") or {"": report["usage"]}
    for month, usage in by_month.items():
        rows = []
        for coop, ms in usage.items():
            for m, u in ms.items():
                quota_h = report["quota"].get(coop, {}).get(m, {}).get("quota_cpu_hours")
                over = max(0.0, u["cpu_ms"] / 3_600_000 - quota_h) if quota_h is not None else None
                pct = (over / quota_h * 100) if over is not None and quota_h else None
                rows.append([coop, m, u["completed"], u["concurrent"], round(u["cpu_ms"] / 1000, 3),
                             quota_h, round(over, 9) if over is not None else None,
                             round(pct, 2) if pct is not None else None])
        if rows:
            if len(by_month) > 1:
                last = month == list(by_month)[-1]
                md += [f"**{month}**" + (" (the month the run ended in)" if last else ""), ""]
            md += [_table(["coop", "member", "tasks completed", "concurrent", "CPU s", "quota CPU h",
                           "overshoot CPU h", "overshoot %"], rows), ""]
    qo = report["quota_overshoot"]
    if qo["member"]:
        month = f" ({qo['month']})" if qo.get("month") and len(by_month) > 1 else ""
        md += [f"Largest quota overshoot: {qo['member']} in {qo['coop']}{month}: {qo['cpu_hours']:.6g} CPU-hours "
               f"({qo['percent']:.1f} % of the quota) beyond the monthly quota.", ""]
    md += ["## Nodes", ""]
    md += [_table(["node", "region", "roles", "kills", "restarts", "CPU s", "CPU %", "RSS max MB"],
                  [[n["name"], n["region"], "+".join(n["roles"]), n["kills"], n["restarts"], n["cpu_s"],
                    n["cpu_pct"], n["rss_mb_max"]] for n in report["nodes"]]), ""]
    if report["process"]:
        pr = report["process"]
        md += [f"Simulator process ({pr['what']}): {pr['cpu_s']} CPU s, {pr['cpu_pct']} % CPU, "
               f"{pr['rss_mb_max']} MB RSS max.", ""]
    if plots:
        md += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    md += ["## Timeline (as played)", "",
           _table(["t (s)", "action", "note"], [[e["t_s"], e["action"], e["note"]] for e in report["timeline"]]), ""]
    if report["notes"]:
        md += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    if report["error_count"]:
        md += [f"## Errors ({report['error_count']})", ""] + [f"- {e}" for e in report["errors"][:20]] + [""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path


def _why(reason: str) -> str:
    """An executor-lost reason without the DIDs: "failed: lost ... stopped answering"."""
    words = [w for w in reason.split() if not w.startswith("did:")]
    return " ".join(words)


def write_all(obs: Observations, report: dict[str, Any], out: Path, command: str | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    plots = [p for p in (plot_propagation(report, out), plot_timeline(obs, report, out),
                         plot_latency(obs, out), plot_tasks(report, out), plot_usage(report, out)) if p]
    report["plots"] = plots
    return [write_json(report, out), write_markdown(report, plots, out, command), *(out / p for p in plots)]
