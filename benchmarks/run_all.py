"""Run every benchmark in benchmarks/ and write BENCHMARKS.md.

    python benchmarks/run_all.py --out BENCHMARKS.md [--only admission usage] [--timeout 600]

Each ``benchmarks/<name>.py`` runs in its own process with ``--json`` (and
the sizes below, chosen so the whole run takes a few minutes); its last JSON
line (an object, or a list of objects) is its result. A benchmark that fails,
times out or prints no JSON is recorded with its error and the run goes on.
The report has a table per benchmark, the design targets with pass/fail, the
machine, the date and the command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Sizes for a run of a few minutes; a benchmark not listed runs with --json alone.
ARGS: dict[str, list[str]] = {
    "admission": ["--iterations", "100000"],
    "usage": ["--n", "200000", "--durable-n", "50000"],
    "wire": ["--n", "3000"],
    "executor": ["--n", "2000"],
    "placement": ["--iterations", "1000"],
    "propagation": ["--sizes", "10", "50", "--messages", "30"],
    "tasks": ["--nodes", "5", "--tasks", "1500", "--concurrency", "32"],
}
ORDER = ["admission", "usage", "wire", "executor", "placement", "propagation", "tasks"]


@dataclass
class Result:
    name: str
    command: list[str]
    seconds: float
    data: Any = None
    error: str | None = None


@dataclass
class Target:
    """A design target: which figure, the comparison, and the design's wording."""

    what: str
    icn: str
    ours: str
    bench: str
    pick: Callable[[Any], Any]
    ok: Callable[[Any], bool]
    unit: str = ""
    notes: list[str] = field(default_factory=list)


def _rows(data: Any) -> list[dict[str, Any]]:
    return data if isinstance(data, list) else [data] if isinstance(data, dict) else []


def _get(key: str) -> Callable[[Any], Any]:
    return lambda data: next((r[key] for r in _rows(data) if key in r), None)


def _prop50(data: Any) -> Any:
    rows = [r for r in _rows(data) if r.get("nodes") == 50]
    return max((r["p99_ms"] for r in rows if r.get("p99_ms") is not None), default=None)


TARGETS = [
    Target("admission decision", "< 5 ms", "p99 <= 50 µs (1,000 policies, 100,000 members)", "admission",
           _get("p99_us"), lambda v: v <= 50, "µs"),
    Target("usage updates, in memory", "1,000/s", ">= 100,000/s", "usage",
           _get("mem_updates_per_s"), lambda v: v >= 100_000, "/s"),
    Target("usage updates, durable batched", "1,000/s", ">= 20,000/s", "usage",
           _get("durable_updates_per_s"), lambda v: v >= 20_000, "/s"),
    Target("memory per policy", "< 1 KB", "< 1 KB stored", "admission",
           _get("policy_bytes"), lambda v: v < 1024, "bytes"),
    Target("policy update reaching every node, 50 nodes on localhost", "none", "p99 < 500 ms", "propagation",
           _prop50, lambda v: v < 500, "ms (worst p99 over the 50-node runs)"),
    Target("submit -> result, trivial task, localhost mesh", ">= 1.5 s by design", "p50 < 100 ms", "tasks",
           _get("p50_ms"), lambda v: v < 100, "ms"),
    Target("trivial tasks through a 5-node localhost mesh", "none", ">= 100 tasks/s", "tasks",
           _get("tasks_per_s"), lambda v: v >= 100, "tasks/s"),
]


def discover() -> list[str]:
    names = [p.stem for p in HERE.glob("*.py") if p.stem not in ("run_all", "__init__") and not p.stem.startswith("_")]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def run_one(name: str, timeout: float) -> Result:
    cmd = [sys.executable, str(HERE / f"{name}.py"), "--json", *ARGS.get(name, [])]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
    except subprocess.TimeoutExpired:
        return Result(name, cmd, time.perf_counter() - started, error=f"timed out after {timeout:.0f} s")
    except OSError as exc:
        return Result(name, cmd, time.perf_counter() - started, error=f"could not start: {exc}")
    seconds = time.perf_counter() - started
    data = None
    for line in reversed(proc.stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith(("{", "[")):
            try:
                data = json.loads(line)
                break
            except ValueError:
                continue
    if proc.returncode != 0 or data is None:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-8:]
        why = f"exit code {proc.returncode}" if proc.returncode != 0 else "no JSON on stdout"
        return Result(name, cmd, seconds, data=data, error=why + (": " + " / ".join(tail) if tail else ""))
    return Result(name, cmd, seconds, data=data)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": ram_gb, "python": platform.python_version(),
            "platform": platform.platform()}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".")
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(v, separators=(",", ":"))[:120] + "`"
    return "-" if v is None else str(v)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and len(v) <= 12 and all(not isinstance(x, (dict, list)) for x in v.values()):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def table_for(result: Result) -> list[str]:
    rows = _rows(result.data)
    if not rows:
        return []
    flats = [_flat(r) for r in rows]
    if len(flats) == 1:
        lines = ["| figure | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in flats[0].items()]
        return lines
    keys: list[str] = []
    for f in flats:
        keys += [k for k in f if k not in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(_fmt(f.get(k)) for k in keys) + " |" for f in flats]
    return lines


def render(results: list[Result], command: str, started: dt.datetime, total_s: float) -> str:
    m = machine()
    by = {r.name: r for r in results}
    md = ["# Benchmarks", "",
          f"Run {started.strftime('%Y-%m-%d %H:%M UTC')} with `{command}` ({total_s:.0f} s in all).", "",
          f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM; Python {m['python']} "
          f"on {m['platform']}.", "",
          "Figures are from one run on this machine; they vary between runs and machines "
          "(localhost meshes share the CPU among all their nodes).", "",
          "## Targets (from DESIGN.md)", "",
          "| what | ICN's target | ours | measured | verdict |", "|---|---|---|---|---|"]
    for t in TARGETS:
        r = by.get(t.bench)
        if r is None:
            measured, verdict = "-", "not run"
        else:
            value = t.pick(r.data) if r.data is not None else None
            if value is None:
                measured, verdict = "-", f"no figure ({r.error or 'missing in output'})"[:200]
            else:
                measured = f"{_fmt(value)} {t.unit}".strip()
                verdict = "**pass**" if t.ok(value) else "**FAIL**"
        md.append(f"| {t.what} | {t.icn} | {t.ours} | {measured} | {verdict} |")
    md += ["", "## Runs", "", "| benchmark | command | seconds | status |", "|---|---|---|---|"]
    for r in results:
        cmd = " ".join(shlex.quote(c) for c in [Path(r.command[0]).name, str(Path(r.command[1]).relative_to(ROOT)), *r.command[2:]])
        status = "ok" if r.error is None else f"error: {r.error}"[:300].replace("|", "\\|")
        md.append(f"| {r.name} | `{cmd}` | {r.seconds:.1f} | {status} |")
    for r in results:
        md += ["", f"## {r.name}", ""]
        doc = _docline(r.name)
        if doc:
            md += [doc, ""]
        if r.error:
            md += [f"**Error**: {r.error}", ""]
        md += table_for(r) or ["(no figures)"]
    return "\n".join(md) + "\n"


def _docline(name: str) -> str:
    try:
        text = (HERE / f"{name}.py").read_text()
    except OSError:
        return ""
    if text.startswith('"""'):
        return text[3:].split("\n", 1)[0].strip().rstrip('"')
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    ap.add_argument("--only", nargs="*", help="run only these benchmarks")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per benchmark")
    ap.add_argument("--json-out", type=Path, help="also write the raw results as JSON")
    args = ap.parse_args(argv)
    names = discover()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            ap.error(f"unknown benchmark(s) {unknown}; available: {names}")
        names = [n for n in names if n in args.only]
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    results = []
    for name in names:
        print(f"running {name} ...", flush=True)
        r = run_one(name, args.timeout)
        print(f"  {name}: {'ok' if r.error is None else 'ERROR ' + r.error[:200]} ({r.seconds:.1f} s)", flush=True)
        results.append(r)
    command = "python benchmarks/run_all.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    args.out.write_text(render(results, command.strip(), started, time.perf_counter() - t0))
    if args.json_out:
        args.json_out.write_text(json.dumps([{"name": r.name, "data": r.data, "error": r.error,
                                              "seconds": r.seconds} for r in results], indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
