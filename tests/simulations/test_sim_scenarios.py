"""Every shipped scenario at small scale (in-process) passes its assertions, and
the report carries the figures a reader and CI rely on."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simulations import schema as sc
from simulations.runner import app, run_scenario

logging.getLogger("libp2p").setLevel(logging.CRITICAL)

REQUIRED = {
    "nodes": list,
    "propagation": {"p50_ms", "p99_ms", "max_ms", "reached_fraction"},
    "tasks": {"submitted", "admitted", "rejected", "completed", "lost", "failed", "latency_p50_ms",
              "latency_p99_ms", "throughput_per_s"},
    "usage_convergence_ms": None,
    "assertions": list,
}
ROOT = Path(__file__).resolve().parents[2]


def check_report(report: dict, out: Path) -> None:
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["assertions"] == report["assertions"]
    for key, shape in REQUIRED.items():
        assert key in on_disk, key
        if isinstance(shape, set):
            assert shape <= set(on_disk[key]), (key, shape - set(on_disk[key]))
        elif shape is list:
            assert isinstance(on_disk[key], list) and on_disk[key]
    for a in on_disk["assertions"]:
        assert {"name", "passed"} <= set(a)
    md = (out / "report.md").read_text()
    assert "## Assertions" in md and "## Policy propagation" in md
    for plot in on_disk["plots"]:
        assert (out / plot).stat().st_size > 1000
        assert f"]({plot})" in md


@pytest.mark.parametrize("name", ["quickstart", "timebank", "research-gdpr", "housing", "partition", "churn"])
async def test_shipped_scenario_small_in_process(name, tmp_path):
    scenario = sc.load_scenario(sc.SCENARIO_DIR / f"{name}.toml", scale="small")
    out = tmp_path / "out"
    report = await run_scenario(scenario, out, scale="small", in_process=True, workdir=tmp_path / "work")
    failed = [(a["name"], a["detail"]) for a in report["assertions"] if not a["passed"]]
    assert not failed, failed
    assert report["passed"] is True
    assert report["tasks"]["lost"] == 0
    assert report["propagation"]["reached_fraction"] == 1.0
    assert report["node_count"] == scenario.total_nodes
    check_report(report, out)


async def test_failing_assertion_is_reported_not_raised(tmp_path):
    text = (sc.SCENARIO_DIR / "quickstart.toml").read_text()
    import tomllib

    data = tomllib.loads(text)
    data["nodes"][0]["count"] = 2
    data["timeline"] = data["timeline"][:2]
    data["timeline"][1]["count"] = 2
    data["assertions"] = [{"name": "impossible", "expect": "tasks.lost == 1"},
                          {"name": "typo", "expect": "tasks.lots == 0"},
                          {"name": "fine", "expect": "tasks.completed == 2"}]
    scenario = sc.parse_scenario(data)
    report = await run_scenario(scenario, tmp_path / "out", in_process=True)
    by_name = {a["name"]: a for a in report["assertions"]}
    assert not by_name["impossible"]["passed"] and "tasks.lost = 0" in by_name["impossible"]["detail"]
    assert not by_name["typo"]["passed"] and "unknown figure" in by_name["typo"]["detail"]
    assert by_name["fine"]["passed"]
    assert report["passed"] is False


def test_cli_list_and_validate(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    for name in ("quickstart", "timebank", "research-gdpr", "housing", "partition", "churn"):
        assert name in result.output
    assert runner.invoke(app, ["validate", "quickstart"]).exit_code == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[scenario]\nname = "x"\n[[nodes]]\nname = "n"\ncount = 0\n[[coops]]\nid = "c"\npolicy = "timebank.json"\n')
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2 and "nodes.0.count" in result.output
    result = runner.invoke(app, ["run", str(tmp_path / "absent.toml"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no shipped scenario" in result.output


@pytest.mark.slow
def test_quickstart_with_processes_via_cli(tmp_path):
    """The default backend: one OS process per node, driven through the console script's module."""
    out = tmp_path / "demo-out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "simulations.runner", "run", "quickstart", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "REJECT" in proc.stdout and "reached" in proc.stdout and "usage in makers" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["scenario"]["backend"] == "processes"
    assert all(n["rss_mb_max"] and n["cpu_s"] is not None for n in report["nodes"])
    check_report(report, out)


async def test_sequential_burst_meets_the_concurrency_cap_and_settled_usage_meets_the_cpu_cap(tmp_path):
    """One client's burst (each submission after the answer to the one before) of tasks longer than
    the burst: exactly the cap is admitted. After ``wait until = "settled"`` the other desk, which ran
    nothing itself, refuses the member by the CPU-hours those tasks used."""
    scenario = sc.parse_scenario({
        "scenario": {"name": "settle", "topology": "full"},
        "nodes": [{"name": "desk", "count": 2, "roles": ["submitter"]},
                  {"name": "exec", "count": 2, "roles": ["executor"], "concurrency": 2}],
        "coops": [{"id": "c", "policy": "timebank.json", "publisher": "desk.0",
                   "patch": {"default_quota": {"max_concurrent_tasks": 2, "cpu_hours_per_month": 0.00001}}}],
        "members": [{"id": "did:icn:m", "name": "m"}],
        "timeline": [
            {"at": 0, "action": "set_policy", "coop": "c"},
            {"at": 0.5, "action": "submit", "member": "did:icn:m", "coop": "c", "node": "desk.0",
             "module": "work 200000000", "rate": 100, "count": 6, "sequential": True},
            {"at": 0.6, "action": "wait", "until": "settled"},
            {"at": 0.7, "action": "submit", "member": "did:icn:m", "coop": "c", "node": "desk.1",
             "label": "after", "module": "add", "rate": 100, "count": 2},
        ],
        "assertions": [
            {"name": "cap", "expect": "tasks.by_label.m.admitted == 2 and "
                                      "tasks.by_label.m.rejected_by.quota.concurrent_tasks == 4"},
            {"name": "cpu", "expect": "tasks.by_label.after.rejected_by.quota.cpu_hours == 2"},
            {"name": "done", "expect": "tasks.by_label.m.completed == 2 and tasks.lost == 0"},
        ],
    })
    report = await run_scenario(scenario, tmp_path / "out", in_process=True, workdir=tmp_path / "work")
    failed = [(a["name"], a["detail"]) for a in report["assertions"] if not a["passed"]]
    assert not failed, failed
