"""icnctl's governance commands against a real node (libp2p host, SQLite) served over HTTP."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import trio
from typer.testing import CliRunner

from icn_p2p.api.http import ApiApp, serve
from icn_p2p.api.jsonrpc import Dispatcher
from icn_p2p.api.node_service import NodeBackedService
from icn_p2p.cli.icnctl import app
from icn_p2p.identity.keys import write_key_file
from icn_p2p.node.harness import start_nodes

TOKEN = "gov-token"
COOP = "gov-coop"


class NodeServer:
    """One real node and its API in a thread with its own trio loop."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.url = ""
        self.node = None
        self._ready = threading.Event()
        self._stop: trio.CancelScope | None = None
        self._token = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:
            self._stop = scope
            async with start_nodes(1, self.base, coops=[COOP]) as cluster:
                self.node = cluster[0]
                async with trio.open_nursery() as nursery:
                    api = ApiApp(Dispatcher(NodeBackedService(cluster[0]), token=TOKEN))
                    bound = await nursery.start(serve, api, "127.0.0.1", 0)
                    self.url = bound.url
                    self._ready.set()

    def __enter__(self) -> "NodeServer":
        self._thread.start()
        assert self._ready.wait(30), "node did not start"
        return self

    def __exit__(self, *exc) -> None:
        trio.from_thread.run_sync(self._stop.cancel, trio_token=self._token)
        self._thread.join(15)


@pytest.fixture
def server(tmp_path):
    with NodeServer(tmp_path / "mesh") as srv:
        yield srv


def icnctl(server, *args):
    return CliRunner().invoke(app, ["--node", server.url, "--token", TOKEN, *map(str, args)])


def test_found_propose_history_rollback(server, tmp_path):
    key_file = tmp_path / "member.key"
    node_key = server.base / "node0" / "node.key"  # the node itself is a founding member
    write_key_file(key_file)
    genesis = tmp_path / "genesis.json"
    r = icnctl(server, "domain", "genesis", "--name", "gov:c", "--key", node_key, "--key", key_file,
               "--threshold", "1", "--out", genesis)
    assert r.exit_code == 0, r.stderr
    assert "threshold 1" in r.stdout

    r = icnctl(server, "domain", "found", "--genesis", genesis)
    assert r.exit_code == 0, r.stderr
    assert "domain gov:c: accepted, 2 members, threshold 1" in r.stdout
    shown = json.loads(icnctl(server, "domain", "show", "gov:c", "--json").stdout)
    assert server.node.did in shown["members"]

    policy = tmp_path / "policy.json"
    doc = {"coop_id": COOP, "governance_domain": "gov:c",
           "default_quota": {"cpu_hours_per_month": 5.0, "max_concurrent_tasks": 1, "max_priority": "Normal"}}
    policy.write_text(json.dumps(doc))
    r = icnctl(server, "policy", "propose", "--policy", policy, "--reason", "start")
    assert r.exit_code == 0, r.stderr
    assert "version 1: accepted" in r.stdout
    doc["default_quota"]["cpu_hours_per_month"] = 9.0
    policy.write_text(json.dumps(doc))
    proposed = json.loads(icnctl(server, "policy", "propose", "--policy", policy, "--json").stdout)
    assert proposed["accepted"] and proposed["version"] == 2

    history = json.loads(icnctl(server, "policy", "history", "--coop-id", COOP, "--json").stdout)
    assert [v["version"] for v in history["versions"]] == [1, 2]
    assert "cpu_hours_per_month" in history["versions"][1]["changes"]

    r = icnctl(server, "policy", "rollback", "--coop-id", COOP, "--to-version", "1", "--reason", "too generous")
    assert r.exit_code == 0, r.stderr
    assert "(version 3) accepted" in r.stdout
    shown = json.loads(icnctl(server, "policy", "show", "--coop-id", COOP, "--json").stdout)
    assert shown["version"] == 3 and shown["policy"]["default_quota"]["cpu_hours_per_month"] == 5.0

    r = icnctl(server, "policy", "approve", proposed["proposal_id"])
    assert r.exit_code == 0 and proposed["proposal_id"] in r.stdout


def test_governance_errors_are_one_line(server, tmp_path):
    r = icnctl(server, "domain", "show", "nope")
    assert r.exit_code == 1 and "no governance domain" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = icnctl(server, "domain", "found", "--genesis", bad)
    assert r.exit_code == 1
    r = icnctl(server, "domain", "genesis", "--name", "x", "--key", tmp_path / "missing.key",
               "--threshold", "1", "--out", tmp_path / "g.json")
    assert r.exit_code == 1 and "does not exist" in r.stderr
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps({"coop_id": COOP, "governance_domain": "gov:unknown", "default_quota": {
        "cpu_hours_per_month": 1.0, "max_concurrent_tasks": 1, "max_priority": "Low"}}))
    r = icnctl(server, "policy", "propose", "--policy", policy)
    assert r.exit_code == 1 and "unknown_domain" in r.stderr
    r = icnctl(server, "policy", "rollback", "--coop-id", COOP, "--to-version", "4")
    assert r.exit_code == 1
