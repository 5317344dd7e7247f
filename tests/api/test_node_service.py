"""The API backed by real Nodes: two libp2p nodes on 127.0.0.1, SQLite stores in tmp_path, HTTP on port 0."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from icn_p2p.api.http import ApiApp, serve
from icn_p2p.api.jsonrpc import Dispatcher
from icn_p2p.api.node_service import NodeBackedService, act_to_json
from icn_p2p.core.policy import CoopSchedulingPolicy
from icn_p2p.identity.keys import NodeKey
from icn_p2p.node.harness import start_nodes
from icn_p2p.policy.governance import make_local_act

TOKEN = "node-service-token"
REPO = Path(__file__).parents[2]
COOP = "basic-coop"
GUEST = "did:icn:guest"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def policy_doc() -> dict:
    doc = json.loads((REPO / "configs" / "policies" / "basic-cooperative.json").read_text())
    doc["governance_domain"] = None
    doc["member_quotas"] = {GUEST: {"cpu_hours_per_month": 10.0, "max_concurrent_tasks": 1,
                                    "max_priority": "Low", "credits_per_month": 0}}
    return CoopSchedulingPolicy.model_validate(doc).to_icn_dict()


class Api:
    def __init__(self, url: str, http: httpx.AsyncClient) -> None:
        self.url = url
        self.http = http

    async def call(self, method: str, **params):
        r = await self.http.post(self.url + "/rpc", json={"jsonrpc": "2.0", "id": 1, "method": method,
                                                          "params": params},
                                 headers={"authorization": f"Bearer {TOKEN}"})
        return r.json()

    async def ok(self, method: str, **params):
        doc = await self.call(method, **params)
        assert "result" in doc, doc
        return doc["result"]

    async def err(self, method: str, **params):
        doc = await self.call(method, **params)
        assert "error" in doc, doc
        return doc["error"]


@pytest.fixture
async def mesh(tmp_path):
    async with start_nodes(2, tmp_path, coops=[COOP], region="eu-central",
                           capabilities={"encryption": "1.2"}) as cluster:
        async with trio.open_nursery() as nursery:
            service = NodeBackedService(cluster[0])
            bound = await nursery.start(serve, ApiApp(Dispatcher(service, token=TOKEN)), "127.0.0.1", 0)
            async with httpx.AsyncClient(timeout=10) as http:
                yield cluster, Api(bound.url, http)
            nursery.cancel_scope.cancel()


async def test_node_info_peers_and_health(mesh):
    cluster, api = mesh
    a, b = cluster[0], cluster[1]
    info = await api.ok("node.info")
    assert info["did"] == a.did and info["peer_id"] == a.peer_id.to_base58()
    assert info["listen_addrs"] and all(x.endswith(f"/p2p/{info['peer_id']}") for x in info["listen_addrs"])
    assert info["region"] == "eu-central" and info["capabilities"] == {"encryption": "1.2"}
    assert info["coops"] == [COOP] and info["peers"] == 1

    peers = (await api.ok("mesh.peers"))["peers"]
    assert [p["peer_id"] for p in peers] == [b.peer_id.to_base58()]
    assert peers[0]["did"] == b.did
    assert all(x.endswith(f"/p2p/{b.peer_id.to_base58()}") for x in peers[0]["addrs"])

    r = await api.http.get(api.url + "/healthz")
    assert r.status_code == 200 and r.json() == {"ok": True, "did": a.did, "peers": 1}

    # The peer tells us what it holds: its coops, then the policy version once it has it.
    await b.set_local_policy(policy_doc())
    with trio.fail_after(10):
        while (await api.ok("mesh.peers"))["peers"][0]["policy_versions"] != {COOP: 1}:
            await trio.sleep(0.05)
    assert (await api.ok("mesh.peers"))["peers"][0]["coops"] == [COOP]


async def test_policy_lifecycle_through_the_api_reaches_the_peer(mesh):
    cluster, api = mesh
    doc = policy_doc()
    res = await api.ok("policy.set", policy=doc, reason="first")
    assert res["version"] == 1 and res["status"] == "accepted" and res["changed"] is True
    assert res["content_hash"] == CoopSchedulingPolicy.model_validate(doc).content_hash()
    again = await api.ok("policy.set", policy=doc)
    assert again["changed"] is False and again["version"] == 1

    doc2 = {**doc, "enforcement_mode": "Permissive"}
    assert (await api.ok("policy.set", policy=doc2, coop_id=COOP))["version"] == 2

    got = await api.ok("policy.get", coop_id=COOP)
    assert got["version"] == 2 and got["policy"] == doc2
    assert got["set_by"] == cluster[0].did and got["governed"] is False
    assert (await api.ok("policy.get", coop_id=COOP, version=1))["policy"] == doc
    err = await api.err("policy.get", coop_id=COOP, version=9)
    assert err["data"]["reason"] == "not_found"

    listed = (await api.ok("policy.list"))["policies"]
    assert [(p["coop_id"], p["version"], p["enforcement_mode"]) for p in listed] == [(COOP, 2, "Permissive")]
    hist = (await api.ok("policy.history", coop_id=COOP))["versions"]
    assert [(v["version"], v["status"]) for v in hist] == [(1, "active"), (2, "active")]
    assert hist[0]["reason"] == "first" and hist[0]["set_by"] == cluster[0].did
    assert (await api.ok("node.info"))["policy_versions"] == {COOP: 2}

    # gossip carries the act to the other node
    with trio.fail_after(10):
        while (v := cluster[1].current_policy(COOP)) is None or v.version < 2:
            await trio.sleep(0.05)
    assert v.policy.to_icn_dict() == doc2

    assert (await api.ok("policy.remove", coop_id=COOP))["removed"] is True
    assert (await api.err("policy.get", coop_id=COOP))["data"]["reason"] == "not_found"
    assert (await api.err("policy.history", coop_id=COOP))["data"]["reason"] == "not_found"
    assert (await api.ok("policy.remove", coop_id=COOP))["removed"] is False


async def test_policy_set_with_a_signed_act_in_json(mesh):
    cluster, api = mesh
    act = make_local_act(cluster[0].key, policy_doc(), version=1, parent_hash=None,
                         created_at_ms=now_ms())
    res = await api.ok("policy.set", act=act_to_json(act))
    assert res["version"] == 1 and res["act_id"] == act.act_id
    bad = act_to_json(act)
    bad["proposal"]["signature"] = "zz"
    assert (await api.err("policy.set", act=bad))["data"]["reason"] == "malformed"
    err = await api.err("policy.set", act={"type": "nope"})
    assert err["code"] == -32000 and err["data"]["reason"] == "malformed"
    err = await api.err("policy.set", act=act_to_json(act), coop_id="other")
    assert err["data"]["reason"] == "invalid"
    # a local act of another key for a fresh version is refused with the store's reason
    other = make_local_act(NodeKey.generate(), {**policy_doc(), "coop_id": "elsewhere"}, version=1,
                           parent_hash=None, created_at_ms=now_ms())
    res = await api.call("policy.set", act=act_to_json(other))
    if "error" in res:
        assert res["error"]["code"] == -32000 and res["error"]["data"]["reason"]
    # a version gap is refused and nothing changes
    gap = make_local_act(cluster[0].key, policy_doc() | {"enforcement_mode": "Monitoring"}, version=5,
                         parent_hash=None, created_at_ms=now_ms())
    err = await api.err("policy.set", act=act_to_json(gap))
    assert err["code"] == -32000 and err["data"]["reason"] != "internal"
    assert (await api.ok("policy.get", coop_id=COOP))["version"] == 1


async def test_quota_and_what_if_against_live_usage(mesh):
    cluster, api = mesh
    await api.ok("policy.set", policy=policy_doc())
    await cluster[0].record_usage(COOP, GUEST, cpu_ms=3_600_000 * 11, tasks_completed=3, fuel=500)
    usage = await api.ok("quota.usage", coop_id=COOP, member=GUEST)
    assert usage["usage"]["cpu_hours_this_month"] == pytest.approx(11.0)
    assert usage["usage"]["tasks_completed_this_month"] == 3
    assert usage["quota"]["cpu_hours_per_month"] == 10.0
    listed = await api.ok("quota.list", coop_id=COOP)
    assert [m["usage"]["member"] for m in listed["members"]] == [GUEST]
    assert len(listed["month"]) == 7
    old = await api.ok("quota.list", coop_id=COOP, month="2001-01")
    assert old["members"] == [] and old["month"] == "2001-01"
    nopolicy = await api.ok("quota.usage", coop_id="unknown", member=GUEST)
    assert nopolicy["quota"] is None

    check = await api.ok("policy.check", coop_id=COOP, member=GUEST, priority="Normal")
    assert check["decision"]["decision"] == "reject" and check["policy_version"] == 1
    rules = {v["rule"] for v in check["decision"]["violations"]}
    assert len(rules) >= 2  # over CPU-hours and above max priority, all listed
    assert check["usage"]["cpu_hours_this_month"] == pytest.approx(11.0)
    # what-if with a candidate policy that raises the guest's quota
    looser = policy_doc()
    looser["member_quotas"][GUEST].update(cpu_hours_per_month=100.0, max_priority="High", credits_per_month=None)
    check = await api.ok("policy.check", coop_id=COOP, member=GUEST, priority="Normal", policy=looser)
    assert check["decision"]["decision"] == "allow" and check["policy_version"] is None
    err = await api.err("policy.check", coop_id="unknown", member=GUEST)
    assert err["data"]["reason"] == "not_found"


ADD_WAT = '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'


async def test_compute_submit_status_list_explain_cancel(mesh):
    import base64

    cluster, api = mesh
    module = base64.b64encode(ADD_WAT.encode()).decode()
    err = await api.err("compute.submit", coop_id=COOP, module=module, entry="add", args=[1, 2])
    assert err["data"]["reason"] == "no_policy"
    await api.ok("policy.set", policy=policy_doc())
    with trio.fail_after(10):
        while not cluster[1].policy_heads().get(COOP):
            await trio.sleep(0.02)
    sent = await api.ok("compute.submit", coop_id=COOP, module=module, entry="add", args=[40, 2],
                        task_id="job-1", submitter="did:icn:alice")
    assert sent["task_id"] == "job-1" and sent["state"] == "admitted"
    assert sent["decision"]["decision"] == "allow"
    with trio.fail_after(10):
        while (status := await api.ok("compute.status", task_id="job-1"))["state"] != "completed":
            assert status["state"] not in ("failed", "expired", "rejected"), status
            await trio.sleep(0.05)
    assert status["result"] == [42] and status["executor"] in (cluster[0].did, cluster[1].did)
    assert status["fuel_used"] > 0 and status["policy_version"] == 1
    listed = await api.ok("compute.list", coop_id=COOP)
    assert [t["task_id"] for t in listed["tasks"]] == ["job-1"]
    assert (await api.ok("compute.list", state="running"))["tasks"] == []
    why = await api.ok("compute.explain", task_id="job-1")
    assert why["chosen"] == status["executor"] and len(why["offers"]) == 2
    assert all(set(o["breakdown"]) >= {"trust", "queue", "rtt"} for o in why["offers"])
    late = await api.ok("compute.cancel", task_id="job-1")
    assert late == {"task_id": "job-1", "cancelled": False, "state": "completed"}
    assert (await api.err("compute.status", task_id="nope"))["data"]["reason"] == "not_found"
    dup = await api.err("compute.submit", coop_id=COOP, module=module, entry="add", args=[1, 1],
                        task_id="job-1")
    assert dup["data"]["reason"] == "duplicate_task"
    rejected = await api.ok("compute.submit", coop_id=COOP, module=module, entry="add", args=[1, 1],
                            submitter=GUEST, priority="High")
    assert rejected["state"] == "rejected" and "priority" in rejected["reason"].lower()


async def test_metrics_include_node_figures(mesh):
    _, api = mesh
    await api.ok("policy.list")
    r = await api.http.get(api.url + "/metrics")
    names = {f.name for f in text_string_to_metric_families(r.text)}
    assert {"icn_peers", "icn_rpc_requests"} <= names


async def test_governance_through_the_api(mesh):
    from icn_p2p.policy.governance import DomainGenesis

    cluster, api = mesh
    a, b = cluster[0], cluster[1]
    genesis = DomainGenesis.create("gov:basic", [a.key, b.key], 2, now_ms())
    wire = genesis.to_wire()
    wire["signatures"] = [{**sig, "signature": sig["signature"].hex()} for sig in wire["signatures"]]
    founded = await api.ok("domain.found", genesis=wire)
    assert founded["accepted"] and set(founded["members"]) == {a.did, b.did} and founded["threshold"] == 2
    assert (await api.ok("domain.get", name="gov:basic"))["genesis_id"] == genesis.genesis_id
    assert (await api.err("domain.get", name="nope"))["data"]["reason"] == "not_found"

    doc = policy_doc() | {"governance_domain": "gov:basic"}
    proposed = await api.ok("policy.propose", policy=doc, reason="founding policy")
    assert proposed["status"] == "pending" and proposed["version"] == 1 and not proposed["accepted"]
    assert (await api.err("policy.get", coop_id=COOP))["data"]["reason"] == "not_found"
    with trio.fail_after(10):
        while not b.policy_store.pending(COOP):
            await trio.sleep(0.02)
    vote = await b.governance.approve(proposed["proposal_id"])
    assert vote.accepted
    with trio.fail_after(10):
        while (await api.call("policy.get", coop_id=COOP)).get("result") is None:
            await trio.sleep(0.02)
    history = await api.ok("policy.history", coop_id=COOP)
    v1 = history["versions"][0]
    assert v1["governed"] and v1["mode"] == "governed" and set(v1["approver_dids"]) == {a.did, b.did}
    assert v1["reason"] == "founding policy"

    again = await api.ok("policy.approve", proposal_id=proposed["proposal_id"])
    assert again["status"] in ("replayed", "accepted")  # a second vote changes nothing
    assert (await api.ok("policy.get", coop_id=COOP))["version"] == 1
    local = await api.err("policy.propose", policy=policy_doc())
    assert local["data"]["reason"] == "invalid"
    rollback = await api.err("policy.rollback", coop_id=COOP, to_version=7)
    assert rollback["data"]["reason"] == "version_gap"
    unauth = await api.http.post(api.url + "/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "policy.approve",
                                                         "params": {"proposal_id": "0" * 64}})
    assert unauth.json()["error"]["code"] == -32001
