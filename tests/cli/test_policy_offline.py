"""``icnctl policy validate`` and ``icnctl policy check`` on the example policies and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from icn_p2p.cli import icnctl

from icn_p2p.cli.icnctl import app, main

POLICIES = Path(__file__).resolve().parents[2] / "configs" / "policies"
EXAMPLES = sorted(POLICIES.glob("*.json"))
runner = CliRunner()

SECURE_A = "did:key:z6Mkv5R27FZM1ZBarx1jb6Bbq6RyjXCHmPUbsUeSexddUKLX"
COMPROMISED = "did:key:z6MkiFe7H6P2HGTLzU3TzvrFBKRcd6VYCqLnmkKbqR4jnqwq"


def run(*args: str):
    return runner.invoke(app, list(args))


def write(tmp_path: Path, name: str, body) -> Path:
    path = tmp_path / name
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return path


def test_every_example_policy_validates():
    assert {p.name for p in EXAMPLES} >= {
        "basic-cooperative.json", "gdpr-compliant.json", "tiered-membership.json", "time-restricted.json",
        "executor-filtering.json", "permissive-development.json", "timebank.json", "housing.json",
        "research-biolab.json"}
    r = run("policy", "validate", *map(str, EXAMPLES))
    assert r.exit_code == 0, r.output
    assert r.output.count("ok ") == len(EXAMPLES)
    r = run("policy", "validate", "--json", *map(str, EXAMPLES))
    doc = json.loads(r.stdout)
    assert doc["valid"] is True and all(f["valid"] for f in doc["files"])
    assert len({f["content_hash"] for f in doc["files"]}) == len(EXAMPLES)


def test_validate_names_each_bad_field_by_json_path(tmp_path):
    bad = write(tmp_path, "x.json", {
        "coop_id": "x",
        "rules": [{"TimeWindow": {"allowed_hours": [1, 2, 24], "allowed_days": [0], "priorities": ["Low"]}},
                  {"Teleport": {}}],
        "member_quotas": {"did:icn:g": {"cpu_hours_per_month": 1.0, "max_concurrent_tasks": "5",
                                        "max_priority": "Low"}},
        "default_quota": {"cpu_hours_per_month": -1.0, "max_concurrent_tasks": 1, "max_priority": "Urgent"},
    })
    good = POLICIES / "basic-cooperative.json"
    r = run("policy", "validate", str(good), str(bad))
    assert r.exit_code == 1
    out = r.output
    assert f"{bad}: rules[0].TimeWindow.allowed_hours[2]: must be <= 23 (got 24)" in out
    assert f"{bad}: rules[1]: unknown rule type 'Teleport'" in out
    assert f'{bad}: member_quotas["did:icn:g"].max_concurrent_tasks: must be an integer (got string "5")' in out
    assert f"{bad}: default_quota.cpu_hours_per_month: must be >= 0" in out
    assert f"{bad}: default_quota.max_priority: must be one of" in out
    assert "1 of 2 file(s) invalid" in out
    r = run("policy", "validate", "--json", str(bad))
    doc = json.loads(r.stdout)
    assert r.exit_code == 1 and doc["valid"] is False
    paths = [e["path"] for e in doc["files"][0]["errors"]]
    assert "rules[0].TimeWindow.allowed_hours[2]" in paths and len(paths) == 5


def test_validate_reports_invalid_json_with_line_and_column_and_missing_files(tmp_path):
    broken = write(tmp_path, "broken.json", '{"coop_id":\n  "x",, }')
    nan = write(tmp_path, "nan.json", json.dumps({
        "coop_id": "x", "rules": [{"MemberPriority": {"member": "m", "multiplier": 1.0}}],
        "default_quota": {"cpu_hours_per_month": 1.0, "max_concurrent_tasks": 1, "max_priority": "Low"},
    }).replace('"multiplier": 1.0', '"multiplier": NaN'))
    r = run("policy", "validate", str(broken), str(nan), str(tmp_path / "absent.json"), str(tmp_path))
    assert r.exit_code == 1
    assert f"{broken}: $: invalid JSON at line 2, column 7" in r.output
    assert f"{nan}: rules[0].MemberPriority.multiplier: must be a finite number (got NaN)" in r.output
    assert "absent.json: $: no such policy file" in r.output
    assert "is a directory" in r.output
    assert "Traceback" not in r.output


def test_validate_needs_a_file():
    assert run("policy", "validate").exit_code == 2


# --- policy check on each example: one task that passes, one that fails, and why ---------------

NOV_SUN_2300 = "2026-11-22T23:00:00Z"   # Sunday night
NOV_SUN_1400 = "2026-11-22T14:00:00Z"   # Sunday afternoon
NOV_WED_2300 = "2026-11-25T23:00:00Z"   # Wednesday night

CASES = [
    # file, task, usage, at, expected decision, expected violation rules
    ("basic-cooperative.json", {"priority": "High"}, {"cpu_hours_this_month": 49.9}, NOV_SUN_1400, "allow", []),
    ("basic-cooperative.json", {"priority": "Normal"}, {"cpu_hours_this_month": 50.0}, NOV_SUN_1400,
     "reject", ["quota.cpu_hours"]),
    ("gdpr-compliant.json", {"priority": "Normal"}, {}, NOV_SUN_1400, "allow", []),
    ("gdpr-compliant.json", {"priority": "Critical"}, {"concurrent_tasks": 10}, NOV_SUN_1400,
     "reject", ["quota.concurrent_tasks", "quota.max_priority"]),
    ("tiered-membership.json", {"priority": "Critical", "submitter": "did:icn:building-automation"},
     {"cpu_hours_this_month": 150.0}, NOV_SUN_1400, "allow", []),
    ("tiered-membership.json", {"priority": "Normal", "submitter": "did:icn:guest"}, {}, NOV_SUN_1400,
     "reject", ["quota.max_priority"]),
    ("time-restricted.json", {"priority": "Low"}, {}, NOV_WED_2300, "allow", []),
    ("time-restricted.json", {"priority": "Normal"}, {}, NOV_SUN_2300, "reject", ["TimeWindow"]),
    ("executor-filtering.json", {"priority": "High"}, {}, NOV_SUN_1400, "allow", []),
    ("executor-filtering.json", {"priority": "Normal"}, {"credits_spent_this_month": 1000}, NOV_SUN_1400,
     "reject", ["quota.credits"]),
    ("permissive-development.json", {"priority": "Critical"}, {}, NOV_SUN_1400, "allow", []),
    ("permissive-development.json", {"priority": "Low"}, {"cpu_hours_this_month": 1000.0}, NOV_SUN_1400,
     "allow", ["quota.cpu_hours", "TimeWindow"]),
    ("timebank.json", {"priority": "Normal"}, {"cpu_hours_this_month": 9.5, "concurrent_tasks": 2},
     NOV_SUN_1400, "allow", []),
    ("timebank.json", {"priority": "High"}, {"cpu_hours_this_month": 10.0}, NOV_SUN_1400,
     "reject", ["quota.cpu_hours", "quota.max_priority"]),
    ("housing.json", {"priority": "Low"}, {}, NOV_SUN_2300, "allow", []),
    ("housing.json", {"priority": "Low"}, {}, NOV_SUN_1400, "reject", ["TimeWindow"]),
    ("research-biolab.json", {"priority": "High", "tags": ["patient-data"]}, {}, NOV_SUN_1400, "allow", []),
    ("research-biolab.json", {"priority": "Normal"}, {"credits_spent_this_month": 1000}, NOV_SUN_1400,
     "reject", ["quota.credits"]),
]


@pytest.mark.parametrize("name, task, use, when, verdict, rules", CASES,
                         ids=[f"{c[0]}-{c[4]}-{'+'.join(c[5]) or 'clean'}" for c in CASES])
def test_check_each_example(tmp_path, name, task, use, when, verdict, rules):
    policy = json.loads((POLICIES / name).read_text())
    body = {"id": "task-1", "coop_id": policy["coop_id"], "submitter": "did:icn:member-7", **task}
    task_file = write(tmp_path, "task.json", body)
    usage_file = write(tmp_path, "usage.json", use)
    r = run("policy", "check", str(POLICIES / name), "--task", str(task_file), "--usage", str(usage_file),
            "--at", when, "--json")
    assert r.exit_code == (0 if verdict == "allow" else 3), r.output
    doc = json.loads(r.stdout)
    assert doc["decision"] == verdict
    assert [v["rule"] for v in doc["violations"]] == rules
    for v in doc["violations"]:
        assert v["reason"] and v["remedy"]
    # the readable form says the same
    r2 = run("policy", "check", str(POLICIES / name), "--task", str(task_file), "--usage", str(usage_file),
             "--at", when)
    assert r2.exit_code == r.exit_code
    assert ("ALLOW" if verdict == "allow" else "REJECT") in r2.output
    for rule in rules:
        assert rule in r2.output


def test_check_json_shape_and_constraints(tmp_path):
    task = write(tmp_path, "t.json", {"id": "t", "coop_id": "secure-coop", "submitter": "did:icn:m",
                                      "priority": "High"})
    r = run("policy", "check", str(POLICIES / "executor-filtering.json"), "--task", str(task),
            "--at", NOV_SUN_1400, "--json")
    doc = json.loads(r.stdout)
    assert set(doc) >= {"decision", "adjusted_priority", "violations", "constraints"}
    assert doc["adjusted_priority"] == "High"
    c = doc["constraints"]
    assert SECURE_A in c["allowed_executors"] and COMPROMISED in c["forbidden_executors"]
    assert c["required_capabilities"] == [{"capability": "secure-execution", "min_version": "2.0"}]
    assert c["required_region"] is None and doc["feasible"] is True
    assert doc["evaluated_at"] == "2026-11-22T14:00:00Z"


def test_check_shows_priority_adjustment_region_and_default_usage(tmp_path):
    task = write(tmp_path, "t.json", {"id": "t", "coop_id": "housing:greenfield",
                                      "submitter": "did:icn:building-automation-system", "priority": "Normal"})
    r = run("policy", "check", str(POLICIES / "housing.json"), "--task", str(task), "--at", NOV_SUN_1400)
    assert r.exit_code == 0 and "Normal -> Critical" in r.output
    task = write(tmp_path, "g.json", {"id": "t", "coop_id": "healthcare-coop", "submitter": "did:icn:m"})
    r = run("policy", "check", str(POLICIES / "gdpr-compliant.json"), "--task", str(task),
            "--at", "2026-11-22T14:00:00")  # no zone: UTC
    assert r.exit_code == 0
    assert "region: eu-central" in r.output and "needs: encryption >= 1.0" in r.output
    assert "needs: gdpr-compliant" in r.output


def test_check_without_at_reads_the_clock(tmp_path):
    task = write(tmp_path, "t.json", {"id": "t", "coop_id": "basic-coop", "submitter": "did:icn:m"})
    r = run("policy", "check", str(POLICIES / "basic-cooperative.json"), "--task", str(task), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["decision"] == "allow"


def test_check_conflicting_constraints_say_no_executor_can_run_it(tmp_path):
    policy = write(tmp_path, "p.json", {
        "coop_id": "c", "rules": [{"DataSovereignty": {"region": "eu-central", "tags": ["a"]}},
                                  {"DataSovereignty": {"region": "us-west", "tags": ["b"]}}],
        "default_quota": {"cpu_hours_per_month": 1.0, "max_concurrent_tasks": 1, "max_priority": "Low"}})
    task = write(tmp_path, "t.json", {"id": "t", "coop_id": "c", "submitter": "m", "priority": "Low",
                                      "tags": ["a", "b"]})
    r = run("policy", "check", str(policy), "--task", str(task), "--at", NOV_SUN_1400)
    assert r.exit_code == 3
    assert "DataSovereignty" in r.output and "no executor can be feasible" in r.output
    r = run("policy", "check", str(policy), "--task", str(task), "--at", NOV_SUN_1400, "--json")
    assert json.loads(r.stdout)["feasible"] is False


def test_check_bad_input_exits_1_with_path_and_reason(tmp_path):
    good_task = write(tmp_path, "t.json", {"id": "t", "coop_id": "basic-coop", "submitter": "m"})
    bad_task = write(tmp_path, "bt.json", {"id": "t", "coop_id": "basic-coop", "submitter": "m",
                                           "priority": "Urgent", "fuel_limit": "5"})
    bad_usage = write(tmp_path, "u.json", {"cpu_hours_this_month": "3", "concurrent_tasks": -1})
    basic = str(POLICIES / "basic-cooperative.json")
    r = run("policy", "check", basic, "--task", str(bad_task), "--usage", str(bad_usage), "--at", NOV_SUN_1400)
    assert r.exit_code == 1
    assert f"{bad_task}: priority: must be one of" in r.stderr
    assert f"{bad_task}: fuel_limit: must be an integer" in r.stderr
    assert f"{bad_usage}: cpu_hours_this_month: must be a number" in r.stderr
    assert f"{bad_usage}: concurrent_tasks: must be >= 0 (got -1)" in r.stderr
    assert "Traceback" not in r.output
    other = write(tmp_path, "o.json", {"id": "t", "coop_id": "another-coop", "submitter": "m"})
    r = run("policy", "check", basic, "--task", str(other), "--json")
    assert r.exit_code == 1 and "another-coop" in json.loads(r.stdout)["errors"][0]
    bad_policy = write(tmp_path, "p.json", "{")
    r = run("policy", "check", str(bad_policy), "--task", str(good_task))
    assert r.exit_code == 1 and "invalid JSON at line 1" in r.stderr
    missing = write(tmp_path, "m.json", {"id": "t", "coop_id": "basic-coop"})
    r = run("policy", "check", basic, "--task", str(missing))
    assert r.exit_code == 1 and f"{missing}: submitter: is required" in r.stderr


def test_check_usage_errors_exit_2(tmp_path):
    task = write(tmp_path, "t.json", {"id": "t", "coop_id": "basic-coop", "submitter": "m"})
    basic = str(POLICIES / "basic-cooperative.json")
    assert run("policy", "check", basic).exit_code == 2  # --task missing
    r = run("policy", "check", basic, "--task", str(task), "--at", "next tuesday")
    assert r.exit_code == 2 and "ISO 8601" in r.output


def test_global_options_are_accepted_and_ignored_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("ICN_TOKEN", "secret")
    r = run("--node", "http://127.0.0.1:1", "--data-dir", str(tmp_path), "policy", "validate",
            str(POLICIES / "timebank.json"))
    assert r.exit_code == 0
    seen = {}

    @icnctl.app.command("_probe", hidden=True)
    def _probe(ctx: typer.Context) -> None:
        seen["state"] = icnctl.state(ctx)

    try:
        assert run("--node", "http://n:1", "_probe").exit_code == 0
        assert seen["state"] == icnctl.CliState(node="http://n:1", token="secret", data_dir=None)
    finally:
        icnctl.app.registered_commands = [c for c in icnctl.app.registered_commands if c.name != "_probe"]


def test_main_entry_point(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["icnctl", "policy", "validate", str(POLICIES / "housing.json")])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 0
    assert "housing:greenfield" in capsys.readouterr().out
