"""icnctl online commands against a real hypercorn server (in-memory node service) on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "api"))

from memory_service import NODE_DID, PEER_DID, PEER_ID, TOKEN, ServerThread  # noqa: E402

from icn_p2p.cli.icnctl import app  # noqa: E402
from icn_p2p.cli.online import short  # noqa: E402
from icn_p2p.core.usage import MemberUsage  # noqa: E402

REPO = Path(__file__).parents[2]
BASIC = REPO / "configs" / "policies" / "basic-cooperative.json"
LONG_MEMBER = "did:key:z6MkrJVnaZkeFzdQyMZu1cgjg7k1pZZ6pvBQ7XJPt4swbTQ2"
WASM_BYTES = b"\0asm\x01\0\0\0"


@pytest.fixture
def server():
    with ServerThread() as srv:
        yield srv


@pytest.fixture
def wasm(tmp_path):
    path = tmp_path / "task.wasm"
    path.write_bytes(WASM_BYTES)
    return path


@pytest.fixture
def policy_file(tmp_path):
    doc = json.loads(BASIC.read_text())
    doc["coop_id"] = "test-coop"
    doc["member_quotas"] = {"did:icn:guest": {"cpu_hours_per_month": 10.0, "max_concurrent_tasks": 1,
                                              "max_priority": "Low", "credits_per_month": 0}}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(doc))
    return path


def run(server, *args, token=True, env=None):
    root = ["--node", server.url]
    if token:
        root += ["--token", TOKEN]
    result = CliRunner().invoke(app, root + [str(a) for a in args], env=env or {})
    return result


def as_json(result):
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def set_policy(server, policy_file):
    r = run(server, "policy", "set", "--policy", policy_file)
    assert r.exit_code == 0, r.stderr
    return r


# --- policy ----------------------------------------------------------------------------


def test_policy_set_show_list_history_remove(server, policy_file):
    r = set_policy(server, policy_file)
    assert "policy for test-coop set: version 1" in r.stdout
    assert "changed" not in server.service.__dict__  # sanity: the service holds state, not the CLI
    r = run(server, "policy", "set", "--policy", policy_file, "--coop-id", "test-coop")
    assert r.exit_code == 0 and "unchanged: already version 1" in r.stdout

    shown = as_json(run(server, "policy", "show", "--coop-id", "test-coop", "--json"))
    assert shown["policy"] == json.loads(policy_file.read_text()) | shown["policy"]
    assert shown["policy"]["coop_id"] == "test-coop" and shown["set_by"] == NODE_DID
    r = run(server, "policy", "show", "--coop-id", "test-coop")
    assert r.exit_code == 0 and '"coop_id": "test-coop"' in r.stdout and "version 1" in r.stdout

    listed = as_json(run(server, "policy", "list", "--json"))
    assert [p["coop_id"] for p in listed["policies"]] == ["test-coop"]
    r = run(server, "policy", "list")
    assert r.exit_code == 0 and "test-coop" in r.stdout and "Strict" in r.stdout

    hist = as_json(run(server, "policy", "history", "--coop-id", "test-coop", "--json"))
    assert [v["version"] for v in hist["versions"]] == [1]
    assert hist["versions"][0]["set_by"] == NODE_DID
    r = run(server, "policy", "history", "--coop-id", "test-coop")
    assert r.exit_code == 0 and short(NODE_DID) in r.stdout and NODE_DID not in r.stdout

    assert as_json(run(server, "policy", "remove", "--coop-id", "test-coop", "--json"))["removed"] is True
    r = run(server, "policy", "remove", "--coop-id", "test-coop")
    assert r.exit_code == 1 and "no policy for test-coop" in r.stderr
    r = run(server, "policy", "list")
    assert r.exit_code == 0 and "no policies" in r.stdout


def test_policy_set_needs_a_token(server, policy_file, tmp_path, monkeypatch):
    r = run(server, "policy", "set", "--policy", policy_file, token=False)
    assert r.exit_code == 1
    assert r.stderr.strip().startswith("error: unauthorized")
    assert len(r.stderr.strip().splitlines()) == 1
    assert server.service.current == {}
    # from DATA_DIR/api-token
    data = tmp_path / "node"
    data.mkdir()
    (data / "api-token").write_text(TOKEN + "\n")
    r = run(server, "--data-dir", data, "policy", "set", "--policy", policy_file, token=False)
    assert r.exit_code == 0, r.stderr
    # from ICN_TOKEN, and a wrong one is refused
    r = run(server, "policy", "remove", "--coop-id", "test-coop", token=False, env={"ICN_TOKEN": "nope"})
    assert r.exit_code == 1 and "unauthorized" in r.stderr
    r = run(server, "policy", "remove", "--coop-id", "test-coop", token=False, env={"ICN_TOKEN": TOKEN})
    assert r.exit_code == 0


def test_policy_set_refuses_a_bad_file_before_sending(server, tmp_path, policy_file):
    doc = json.loads(policy_file.read_text())
    doc["default_quota"]["max_concurrent_tasks"] = "5"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    r = run(server, "policy", "set", "--policy", bad)
    assert r.exit_code == 1 and "default_quota.max_concurrent_tasks" in r.stderr
    r = run(server, "policy", "set", "--policy", bad, "--json")
    assert r.exit_code == 1
    assert json.loads(r.stdout)["error"]["errors"][0]["path"] == "default_quota.max_concurrent_tasks"
    r = run(server, "policy", "set", "--policy", policy_file, "--coop-id", "other")
    assert r.exit_code == 1 and "does not match" in r.stderr
    r = run(server, "policy", "set", "--policy", tmp_path / "missing.json")
    assert r.exit_code == 1 and "no such policy file" in r.stderr
    assert server.service.current == {}


def test_service_errors_show_the_reason(server):
    r = run(server, "policy", "show", "--coop-id", "nope")
    assert r.exit_code == 1
    assert r.stderr.strip() == "error: not_found: no policy for coop 'nope'"
    r = run(server, "policy", "show", "--coop-id", "nope", "--json")
    assert r.exit_code == 1
    err = json.loads(r.stdout)["error"]
    assert err["reason"] == "not_found" and err["code"] == -32000


# --- quota -----------------------------------------------------------------------------


def test_quota_show_and_list(server, policy_file):
    set_policy(server, policy_file)
    server.service.usage[("test-coop", LONG_MEMBER)] = MemberUsage(
        coop_id="test-coop", member=LONG_MEMBER, month="2025-11", cpu_hours_this_month=12.5,
        concurrent_tasks=2, tasks_completed_this_month=40, credits_spent_this_month=120, fuel_this_month=999,
    )
    shown = as_json(run(server, "quota", "show", "--coop-id", "test-coop", "--member", LONG_MEMBER, "--json"))
    assert shown["usage"]["cpu_hours_this_month"] == 12.5
    assert shown["quota"]["max_concurrent_tasks"] == 5
    r = run(server, "quota", "show", "--coop-id", "test-coop", "--member", LONG_MEMBER)
    assert r.exit_code == 0 and "12.50" in r.stdout and "50.00" in r.stdout
    r = run(server, "quota", "show", "--coop-id", "other", "--member", "did:icn:x")
    assert r.exit_code == 0 and "no quota applies" in r.stdout

    listed = as_json(run(server, "quota", "list", "--coop-id", "test-coop", "--json"))
    assert listed["members"][0]["usage"]["member"] == LONG_MEMBER  # full DID in JSON
    r = run(server, "quota", "list", "--coop-id", "test-coop")
    assert r.exit_code == 0
    assert short(LONG_MEMBER) in r.stdout and LONG_MEMBER not in r.stdout
    row = next(line for line in r.stdout.splitlines() if short(LONG_MEMBER) in line)
    assert "12.50" in row and "120" in row
    r = run(server, "quota", "list", "--coop-id", "empty")
    assert r.exit_code == 0 and "no usage recorded" in r.stdout
    r = run(server, "quota", "list", "--coop-id", "test-coop", "--month", "2025-13")
    assert r.exit_code == 1 and "month" in r.stderr


# --- compute ---------------------------------------------------------------------------


def test_compute_submit_status_list_explain_cancel(server, policy_file, wasm):
    set_policy(server, policy_file)
    r = run(server, "compute", "submit", "--coop-id", "test-coop", "--wasm", wasm, "--entry", "add",
            "--arg", "2", "--arg", "3.5", "--fuel", "1000", "--tag", "batch", "--json")
    sub = as_json(r)
    task_id = sub["task_id"]
    assert sub["state"] == "pending" and sub["decision"]["decision"] == "allow"

    st = as_json(run(server, "compute", "status", task_id, "--json"))
    assert st["state"] == "announced"
    r = run(server, "compute", "status", task_id)
    assert r.exit_code == 0 and f"task {task_id}: running" in r.stdout

    listed = as_json(run(server, "compute", "list", "--coop-id", "test-coop", "--json"))
    assert [t["task_id"] for t in listed["tasks"]] == [task_id]
    assert listed["tasks"][0]["executor"] == PEER_DID
    r = run(server, "compute", "list")
    assert r.exit_code == 0 and task_id in r.stdout and short(PEER_DID) in r.stdout
    r = run(server, "compute", "list", "--state", "failed")
    assert r.exit_code == 0 and "no tasks" in r.stdout

    ex = as_json(run(server, "compute", "explain", task_id, "--json"))
    assert ex["offers"][0]["executor"] == PEER_DID and ex["chosen"] == PEER_DID
    r = run(server, "compute", "explain", task_id)
    assert r.exit_code == 0 and "0.812" in r.stdout and "blacklisted" in r.stdout and "admission: allow" in r.stdout

    r = run(server, "compute", "cancel", task_id, "--reason", "changed my mind")
    assert r.exit_code == 0 and "cancelled" in r.stdout
    r = run(server, "compute", "cancel", task_id)
    assert r.exit_code == 1 and "already cancelled" in r.stderr
    assert as_json(run(server, "compute", "cancel", task_id, "--json"))["cancelled"] is False


def test_compute_submit_wait(server, policy_file, wasm):
    set_policy(server, policy_file)
    r = run(server, "compute", "submit", "--coop-id", "test-coop", "--wasm", wasm, "--wait", "--poll", "0.01")
    assert r.exit_code == 0, r.stderr
    assert "completed" in r.stdout and "result [42]" in r.stdout and "fuel 1234" in r.stdout
    r = run(server, "compute", "submit", "--coop-id", "test-coop", "--wasm", wasm, "--wait", "--poll", "0.01",
            "--json")
    doc = as_json(r)
    assert doc["task"]["state"] == "completed" and doc["submitted"]["task_id"] == doc["task"]["task_id"]


def test_compute_wait_times_out(server, policy_file, wasm):
    set_policy(server, policy_file)
    r = run(server, "compute", "submit", "--coop-id", "test-coop", "--wasm", wasm, "--wait", "--timeout", "0")
    assert r.exit_code == 1 and "still" in r.stderr


def test_compute_submit_rejected_by_policy_exits_3(server, policy_file, wasm):
    set_policy(server, policy_file)
    r = run(server, "compute", "submit", "--coop-id", "test-coop", "--wasm", wasm, "--priority", "high",
            "--submitter", "did:icn:guest")
    assert r.exit_code == 3
    assert "rejected" in r.stderr and "quota.max_priority" in r.stderr and "to pass: submit at Low" in r.stderr
    r = run(server, "compute", "submit", "--coop-id", "test-coop", "--wasm", wasm, "--priority", "High",
            "--submitter", "did:icn:guest", "--json")
    assert r.exit_code == 3
    assert json.loads(r.stdout)["error"]["data"]["decision"]["decision"] == "reject"


def test_compute_submit_bad_input(server, policy_file, wasm, tmp_path):
    set_policy(server, policy_file)
    r = run(server, "compute", "submit", "--coop-id", "test-coop", "--wasm", wasm, "--priority", "Urgent")
    assert r.exit_code == 2
    r = run(server, "compute", "submit", "--coop-id", "test-coop", "--wasm", wasm, "--arg", "two")
    assert r.exit_code == 2
    r = run(server, "compute", "submit", "--coop-id", "test-coop", "--wasm", wasm, "--arg", "nan")
    assert r.exit_code == 2
    text = tmp_path / "not.wasm"
    text.write_text("hello")
    r = run(server, "compute", "submit", "--coop-id", "test-coop", "--wasm", text)
    assert r.exit_code == 1 and "neither a WebAssembly binary nor WAT text" in r.stderr
    r = run(server, "compute", "submit", "--coop-id", "test-coop", "--wasm", tmp_path / "none.wasm")
    assert r.exit_code == 1 and "cannot be read" in r.stderr
    r = run(server, "compute", "submit", "--coop-id", "test-coop", "--wasm", wasm, token=False)
    assert r.exit_code == 1 and "unauthorized" in r.stderr
    assert server.service.tasks == {}


def test_compute_unavailable(server):
    server.service.compute_available = False
    r = run(server, "compute", "list")
    assert r.exit_code == 1
    assert r.stderr.strip() == "error: unavailable: compute is not available on this node"
    r = run(server, "compute", "status", "task-1", "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["error"]["reason"] == "unavailable"


# --- mesh and node ---------------------------------------------------------------------


def test_mesh_peers(server):
    doc = as_json(run(server, "mesh", "peers", "--json"))
    assert doc["peers"][0]["did"] == PEER_DID
    r = run(server, "mesh", "peers")
    assert r.exit_code == 0 and "1.25" in r.stdout and "healthcare-coop" in r.stdout
    server.service.peers = []
    r = run(server, "mesh", "peers")
    assert r.exit_code == 0 and "no peers" in r.stdout


def test_mesh_watch(server, policy_file):
    set_policy(server, policy_file)
    r = run(server, "mesh", "watch", "--once")
    assert r.exit_code == 0
    assert "test-coop" in r.stdout and "healthcare-coop" in r.stdout
    r = run(server, "mesh", "watch", "--count", "2", "--interval", "0.01")
    assert r.exit_code == 0 and "test-coop" in r.stdout
    r = run(server, "mesh", "watch", "--count", "2", "--interval", "0.01", "--json")
    assert r.exit_code == 0
    snaps = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(snaps) == 2
    assert snaps[0]["node"]["policy_versions"] == {"test-coop": 1}
    assert snaps[0]["peers"][0]["policy_versions"] == {"healthcare-coop": 1}


def test_node_info(server):
    info = as_json(run(server, "node", "info", "--json"))
    assert info["did"] == NODE_DID and info["peer_id"] == PEER_ID
    assert all(a.endswith(f"/p2p/{PEER_ID}") for a in info["listen_addrs"])
    r = run(server, "node", "info")
    assert r.exit_code == 0 and NODE_DID in r.stdout and f"/p2p/{PEER_ID}" in r.stdout


# --- node down ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args", [
    ["node", "info"], ["policy", "list"], ["quota", "list", "--coop-id", "c"], ["mesh", "watch", "--once"],
    ["compute", "status", "t"], ["mesh", "peers"],
])
def test_node_down_is_one_line_and_exit_1(args):
    url = f"http://127.0.0.1:{_free_port()}"
    r = CliRunner().invoke(app, ["--node", url] + args)
    assert r.exit_code == 1
    assert r.stderr == f"error: cannot reach node at {url}: connection refused\n"
    assert r.stdout == ""


def test_node_down_with_json():
    url = f"http://127.0.0.1:{_free_port()}"
    r = CliRunner().invoke(app, ["--node", url, "node", "info", "--json"])
    assert r.exit_code == 1
    assert json.loads(r.stdout)["error"] == {
        "message": f"cannot reach node at {url}: connection refused", "reason": "unreachable"}


def test_node_env_var_and_not_json_rpc(server):
    r = CliRunner().invoke(app, ["node", "info", "--json"], env={"ICN_NODE": server.url})
    assert r.exit_code == 0 and json.loads(r.stdout)["did"] == NODE_DID
    # something that answers HTTP but not JSON-RPC
    r = CliRunner().invoke(app, ["--node", server.url + "/nowhere", "node", "info"])
    assert r.exit_code == 1 and "without JSON-RPC" in r.stderr


def test_policy_set_takes_exactly_one_of_policy_or_act(server, policy_file, tmp_path):
    r = run(server, "policy", "set")
    assert r.exit_code == 2
    act = tmp_path / "act.json"
    act.write_text(json.dumps({"proposal": {}, "approvals": []}))
    r = run(server, "policy", "set", "--policy", policy_file, "--act", act)
    assert r.exit_code == 2
    # the act travels to the node, which judges it (this one refuses acts)
    r = run(server, "policy", "set", "--act", act, "--reason", "vote 12")
    assert r.exit_code == 1 and r.stderr.strip() == "error: invalid: signed acts are not handled here"
    act.write_text("[1, 2]")
    r = run(server, "policy", "set", "--act", act)
    assert r.exit_code == 1 and "JSON object" in r.stderr
    act.write_text("{nope")
    r = run(server, "policy", "set", "--act", act, "--json")
    assert r.exit_code == 1 and "invalid JSON" in json.loads(r.stdout)["error"]["message"]
