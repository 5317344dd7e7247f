"""JSON-RPC 2.0 conformance of the node's HTTP face, against a real hypercorn server on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parent))

from memory_service import NODE_DID, TOKEN, MemoryService  # noqa: E402

from icn_p2p.api.http import ApiApp, serve  # noqa: E402
from icn_p2p.api.jsonrpc import Dispatcher  # noqa: E402

POLICY = {
    "coop_id": "healthcare-coop",
    "governance_domain": None,
    "rules": [
        {"DataSovereignty": {"region": "eu-central", "tags": ["patient-data"]}},
        {"TimeWindow": {"allowed_hours": [0, 1, 2], "allowed_days": [0, 6], "priorities": ["Low"]}},
    ],
    "member_quotas": {"did:icn:guest": {"cpu_hours_per_month": 10.0, "max_concurrent_tasks": 1,
                                        "max_priority": "Low", "credits_per_month": 0}},
    "default_quota": {"cpu_hours_per_month": 100.0, "max_concurrent_tasks": 10,
                      "max_priority": "High", "credits_per_month": 1000},
    "enforcement_mode": "Strict",
}
WASM = base64.b64encode(b"\0asm\x01\0\0\0").decode()
AUTH = {"authorization": f"Bearer {TOKEN}"}


class Server:
    def __init__(self, service: MemoryService, url: str, client: httpx.AsyncClient) -> None:
        self.service = service
        self.url = url
        self.http = client

    async def post(self, doc, headers=None, raw: bytes | None = None) -> httpx.Response:
        content = raw if raw is not None else json.dumps(doc).encode()
        return await self.http.post(self.url + "/rpc", content=content, headers=headers or {})

    async def rpc(self, method, params=None, *, id_=1, auth=False):
        doc = {"jsonrpc": "2.0", "method": method, "id": id_}
        if params is not None:
            doc["params"] = params
        r = await self.post(doc, AUTH if auth else None)
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        return r.json()


@pytest.fixture
async def server(nursery):
    service = MemoryService()
    app = ApiApp(Dispatcher(service, token=TOKEN, max_batch=10), access_log=True)
    bound = await nursery.start(serve, app, "127.0.0.1", 0)
    assert bound.port > 0
    async with httpx.AsyncClient(timeout=5) as client:
        yield Server(service, bound.url, client)


# --- single calls and auth -------------------------------------------------------


async def test_read_is_open_and_echoes_id(server):
    resp = await server.rpc("policy.list", id_="abc")
    assert resp == {"jsonrpc": "2.0", "result": {"policies": []}, "id": "abc"}
    resp = await server.rpc("node.info", id_=7)
    assert resp["id"] == 7 and resp["result"]["did"] == NODE_DID


async def test_null_id_is_a_call_not_a_notification(server):
    resp = await server.rpc("policy.list", id_=None)
    assert resp == {"jsonrpc": "2.0", "result": {"policies": []}, "id": None}


async def test_mutation_without_token_is_refused_and_changes_nothing(server):
    resp = await server.rpc("policy.set", {"policy": POLICY})
    assert resp["error"]["code"] == -32001
    assert resp["error"]["data"]["reason"] == "unauthorized"
    assert server.service.current == {}


@pytest.mark.parametrize("header", [
    f"Bearer {TOKEN}x", "Bearer wrong", f"Basic {TOKEN}", "Bearer", TOKEN, f"Bearer {TOKEN[:-1]}",
])
async def test_wrong_token_is_refused(server, header):
    r = await server.post({"jsonrpc": "2.0", "method": "policy.remove", "params": {"coop_id": "x"}, "id": 1},
                          {"authorization": header})
    assert r.json()["error"]["code"] == -32001


async def test_right_token_sets_and_reads_back(server):
    resp = await server.rpc("policy.set", {"policy": POLICY, "coop_id": "healthcare-coop"}, auth=True)
    assert resp["result"]["version"] == 1 and resp["result"]["changed"] is True
    got = await server.rpc("policy.get", {"coop_id": "healthcare-coop"})
    assert got["result"]["policy"] == POLICY
    assert got["result"]["version"] == 1
    # lower-case scheme is accepted too
    r = await server.post({"jsonrpc": "2.0", "method": "policy.remove",
                           "params": {"coop_id": "healthcare-coop"}, "id": 2},
                          {"authorization": f"bearer {TOKEN}"})
    assert r.json()["result"] == {"coop_id": "healthcare-coop", "removed": True}


async def test_no_server_token_refuses_every_mutation(nursery):
    app = ApiApp(Dispatcher(MemoryService(), token=None))
    bound = await nursery.start(serve, app, "127.0.0.1", 0)
    async with httpx.AsyncClient() as client:
        r = await client.post(bound.url + "/rpc", json={"jsonrpc": "2.0", "method": "policy.remove",
                                                        "params": {"coop_id": "x"}, "id": 1},
                              headers={"authorization": "Bearer x"})
    assert r.json()["error"]["code"] == -32001


# --- errors -------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"{", b"", b"not json", b'{"jsonrpc": "2.0", "method": "x", "id": NaN}',
                                 b"\xff\xfe", b"[" * 100_000])
async def test_parse_error(server, raw):
    r = await server.post(None, raw=raw)
    assert r.status_code == 200
    assert r.json() == {"jsonrpc": "2.0", "error": {"code": -32700, "message": r.json()["error"]["message"]},
                        "id": None}


@pytest.mark.parametrize("doc, echoed_id", [
    ({"jsonrpc": "1.0", "method": "policy.list", "id": 1}, 1),
    ({"method": "policy.list", "id": 1}, 1),
    ({"jsonrpc": "2.0", "method": "policy.list", "id": True}, None),
    ({"jsonrpc": "2.0", "method": "policy.list", "id": {"a": 1}}, None),
    ({"jsonrpc": "2.0", "method": "policy.list", "id": [1]}, None),
    ({"jsonrpc": "2.0", "id": 3}, 3),
    ({"jsonrpc": "2.0", "method": 5, "id": 3}, 3),
    ({"jsonrpc": "2.0", "method": "", "id": 3}, 3),
    ({"jsonrpc": "2.0", "method": "policy.list", "params": "x", "id": 4}, 4),
    ({"jsonrpc": "2.0", "method": "policy.list", "id": 4, "extra": 1}, 4),
    (1, None),
    ("hello", None),
])
async def test_invalid_request(server, doc, echoed_id):
    r = await server.post(doc)
    body = r.json()
    assert body["error"]["code"] == -32600
    assert body["id"] == echoed_id


async def test_empty_batch_is_invalid(server):
    body = (await server.post([])).json()
    assert body["error"]["code"] == -32600 and body["id"] is None


async def test_method_not_found(server):
    resp = await server.rpc("policy.frobnicate")
    assert resp["error"]["code"] == -32601
    assert "policy.frobnicate" in resp["error"]["message"]


async def test_invalid_params_names_the_nested_field(server):
    bad = json.loads(json.dumps(POLICY))
    bad["rules"][1]["TimeWindow"]["allowed_hours"][2] = 24
    resp = await server.rpc("policy.set", {"policy": bad}, auth=True)
    err = resp["error"]
    assert err["code"] == -32602
    fields = [e["field"] for e in err["data"]["errors"]]
    assert fields == ["policy.rules.1.TimeWindow.allowed_hours.2"]
    assert "policy.rules.1.TimeWindow.allowed_hours.2" in err["message"]
    assert "24" not in json.dumps(err["data"]["errors"])  # no echo of the input
    assert server.service.current == {}


@pytest.mark.parametrize("method, params, field", [
    ("policy.get", {}, "coop_id"),
    ("policy.get", {"coop_id": 5}, "coop_id"),
    ("policy.get", {"coop_id": "x", "bogus": 1}, "bogus"),
    ("policy.get", {"coop_id": "x", "version": 0}, "version"),
    ("policy.history", {"coop_id": "x", "limit": "5"}, "limit"),
    ("quota.usage", {"coop_id": "x", "member": "m", "month": "2025-13"}, "month"),
    ("compute.list", {"state": "sleeping"}, "state"),
    ("compute.submit", {"coop_id": "c", "module": "!!notbase64"}, "module"),
    ("compute.submit", {"coop_id": "c", "module": base64.b64encode(b"ELF").decode()}, "module"),
    ("compute.submit", {"coop_id": "c", "module": WASM, "priority": "Urgent"}, "priority"),
    ("policy.check", {"coop_id": "a", "member": "m", "policy": {**POLICY}}, "policy"),
    ("policy.set", {"policy": POLICY, "coop_id": "other"}, "coop_id"),
])
async def test_invalid_params_field(server, method, params, field):
    resp = await server.rpc(method, params, auth=True)
    assert resp["error"]["code"] == -32602, resp
    assert resp["error"]["data"]["reason"] == "invalid_params"
    assert resp["error"]["data"]["errors"][0]["field"] == field


async def test_by_position_params_are_refused_but_empty_array_is_none(server):
    resp = await server.rpc("policy.get", ["healthcare-coop"])
    assert resp["error"]["code"] == -32602
    resp = await server.rpc("policy.list", [])
    assert resp["result"] == {"policies": []}


async def test_internal_error_hides_the_traceback(server, caplog):
    server.service.crash_on.add("mesh_peers")
    r = await server.post({"jsonrpc": "2.0", "method": "mesh.peers", "id": 9})
    assert r.json() == {"jsonrpc": "2.0", "error": {"code": -32603, "message": "internal error",
                                                   "data": {"reason": "internal"}}, "id": 9}
    assert "secret" not in r.text and "Traceback" not in r.text
    assert any("rpc_internal_error" in rec.getMessage() for rec in caplog.records)


async def test_service_error_carries_reason_and_data(server):
    resp = await server.rpc("policy.get", {"coop_id": "nope"})
    assert resp["error"]["code"] == -32000
    assert resp["error"]["data"] == {"reason": "not_found", "coop_id": "nope"}
    server.service.compute_available = False
    resp = await server.rpc("compute.list", {})
    assert resp["error"]["data"]["reason"] == "unavailable"
    assert resp["error"]["data"]["capability"] == "compute"


async def test_policy_rejection_is_reported_with_the_decision(server):
    await server.rpc("policy.set", {"policy": POLICY}, auth=True)
    resp = await server.rpc("compute.submit", {"coop_id": "healthcare-coop", "module": WASM,
                                               "priority": "High", "submitter": "did:icn:guest"}, auth=True)
    err = resp["error"]
    assert err["code"] == -32000 and err["data"]["reason"] == "policy_rejected"
    assert err["data"]["decision"]["violations"][0]["rule"] == "quota.max_priority"


# --- batches and notifications --------------------------------------------------


async def test_batch_mixes_results_errors_and_notifications(server):
    batch = [
        {"jsonrpc": "2.0", "method": "policy.set", "params": {"policy": POLICY}, "id": "s"},
        {"jsonrpc": "2.0", "method": "policy.list", "id": 2},
        {"jsonrpc": "2.0", "method": "policy.list"},  # notification
        {"jsonrpc": "2.0", "method": "nope", "id": 3},
        5,
        {"jsonrpc": "2.0", "method": "policy.get", "params": {"coop_id": "healthcare-coop"}, "id": 4},
    ]
    r = await server.post(batch, AUTH)
    replies = r.json()
    assert isinstance(replies, list) and len(replies) == 5
    assert replies[0]["id"] == "s" and replies[0]["result"]["version"] == 1
    assert replies[1]["result"]["policies"][0]["coop_id"] == "healthcare-coop"
    assert replies[1]["result"]["policies"][0]["rules"] == 2
    assert replies[2]["error"]["code"] == -32601 and replies[2]["id"] == 3
    assert replies[3]["error"]["code"] == -32600 and replies[3]["id"] is None
    assert replies[4]["result"]["version"] == 1


async def test_batch_of_only_notifications_has_no_body(server):
    batch = [
        {"jsonrpc": "2.0", "method": "policy.set", "params": {"policy": POLICY}},
        {"jsonrpc": "2.0", "method": "nope"},
        {"jsonrpc": "2.0", "method": "policy.get", "params": {"coop_id": 1}},
    ]
    r = await server.post(batch, AUTH)
    assert r.status_code == 204 and r.content == b""
    # the notification ran: it is a call without an answer
    assert "healthcare-coop" in server.service.current


async def test_single_notification_has_no_body_and_unauthorised_one_does_nothing(server):
    r = await server.post({"jsonrpc": "2.0", "method": "policy.set", "params": {"policy": POLICY}})
    assert r.status_code == 204 and r.content == b""
    assert server.service.current == {}
    server.service.crash_on.add("mesh_peers")
    r = await server.post({"jsonrpc": "2.0", "method": "mesh.peers"})
    assert r.status_code == 204


async def test_batch_size_limit(server):
    batch = [{"jsonrpc": "2.0", "method": "policy.list", "id": i} for i in range(11)]
    body = (await server.post(batch)).json()
    assert body["error"]["code"] == -32600
    assert body["error"]["data"] == {"reason": "batch_too_large", "max_batch": 10}
    body = (await server.post(batch[:10])).json()
    assert [b["id"] for b in body] == list(range(10))


# --- transport -----------------------------------------------------------------


async def test_body_limit_with_content_length(server):
    big = b'{"jsonrpc":"2.0","method":"policy.list","id":1,"params":{"x":"' + b"a" * (1024 * 1024) + b'"}}'
    r = await server.post(None, raw=big)
    assert r.status_code == 413
    assert r.json()["error"]["data"]["reason"] == "body_too_large"


async def test_body_limit_when_streamed_without_length(server):
    async def chunks():
        for _ in range(20):
            yield b" " * (64 * 1024)
    r = await server.http.post(server.url + "/rpc", content=chunks())
    assert r.status_code == 413
    assert r.json()["error"]["code"] == -32600


async def test_just_under_the_limit_is_served(server):
    body = json.dumps({"jsonrpc": "2.0", "method": "policy.list", "id": 1}).encode()
    body += b" " * (1024 * 1024 - len(body))
    r = await server.post(None, raw=body)
    assert r.status_code == 200 and r.json()["result"] == {"policies": []}


async def test_routes_and_methods(server):
    r = await server.http.get(server.url + "/rpc")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = await server.http.get(server.url + "/nowhere")
    assert r.status_code == 404
    r = await server.http.post(server.url + "/metrics")
    assert r.status_code == 405


async def test_healthz(server):
    r = await server.http.get(server.url + "/healthz")
    assert r.status_code == 200
    assert r.json() == {"ok": True, "did": NODE_DID, "peers": 1}
    server.service.healthy = False
    r = await server.http.get(server.url + "/healthz")
    assert r.status_code == 503 and r.json()["ok"] is False


def _samples(text: str, name: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def test_metrics_count_calls_by_method_and_outcome(server):
    key_ok = (("method", "policy.list"), ("outcome", "ok"))
    key_unauth = (("method", "policy.set"), ("outcome", "unauthorized"))
    before = _samples((await server.http.get(server.url + "/metrics")).text, "icn_rpc_requests_total")
    await server.rpc("policy.list")
    await server.rpc("policy.list")
    await server.rpc("policy.set", {"policy": POLICY})
    r = await server.http.get(server.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = _samples(r.text, "icn_rpc_requests_total")
    assert after[key_ok] - before.get(key_ok, 0) == 2
    assert after[key_unauth] - before.get(key_unauth, 0) == 1
    families = {f.name for f in text_string_to_metric_families(r.text)}
    assert {"icn_rpc_requests", "icn_rpc_seconds", "icn_policy_violations", "icn_peers"} <= families


async def test_policy_set_needs_exactly_one_of_policy_or_act(server):
    resp = await server.rpc("policy.set", {}, auth=True)
    assert resp["error"]["code"] == -32602
    assert resp["error"]["data"]["errors"][0]["field"] == "params"
    resp = await server.rpc("policy.set", {"policy": POLICY, "act": {"proposal": {}}}, auth=True)
    assert resp["error"]["data"]["errors"][0]["field"] == "act"
