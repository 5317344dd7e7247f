"""Tasks across a real mesh: libp2p hosts on 127.0.0.1, SQLite stores, wasmtime."""

import logging

import pytest
import trio

from icn_p2p import metrics
from icn_p2p.core.task import ComputeTask
from icn_p2p.node.compute import SubmitError
from icn_p2p.node.harness import start_nodes
from icn_p2p.node.lifecycle import TaskState
from icn_p2p.usage.crdt import SignedUsageEntry

logging.getLogger("libp2p").setLevel(logging.CRITICAL)

ADD = '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'
SPIN = '(module (func (export "spin") (loop br 0)))'
COOP = "coop-a"


def policy(**extra):
    body = {"coop_id": COOP, "default_quota": {"cpu_hours_per_month": 10.0, "max_concurrent_tasks": 5,
                                               "max_priority": "High"}}
    body.update(extra)
    return body


def task(i, member="did:icn:alice", **extra):
    return ComputeTask(id=f"t{i}", coop_id=COOP, submitter=member, entry=extra.pop("entry", "add"),
                       args=extra.pop("args", [2, 3]), fuel_limit=extra.pop("fuel_limit", 1_000_000), **extra)


def counted(name, **labels):
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def wait_policy(cluster, coop=COOP, version=1, timeout=10):
    with trio.fail_after(timeout):
        while not all((h := n.policy_heads().get(coop)) and h.version >= version for n in cluster.nodes):
            await trio.sleep(0.02)


async def wait_usage(cluster, member, tasks, timeout=10):
    with trio.fail_after(timeout):
        while True:
            views = [n.usage_store.member_usage(COOP, member) for n in cluster.nodes]
            if all(v.tasks_completed_this_month >= tasks and v.concurrent_tasks == 0 for v in views):
                return views
            await trio.sleep(0.02)


async def test_task_runs_on_best_executor_and_usage_spreads(tmp_path):
    per_node = [{"roles": ["submitter"]}, {"region": "eu-central"}, {"region": "us-west"}]
    async with start_nodes(3, tmp_path, topology="full", coops=[COOP], per_node=per_node) as cluster:
        a = cluster[0]
        await a.set_local_policy(policy())
        await wait_policy(cluster)
        record = await a.compute.submit(task(1), ADD.encode())
        assert record.state is TaskState.ADMITTED
        done = await a.compute.wait("t1", timeout=10)
        assert done.state is TaskState.COMPLETED, done.reason
        assert done.result["values"] == [5]
        assert done.executor in {cluster[1].did, cluster[2].did}
        explained = a.compute.explain("t1")
        assert explained["winner"] == done.executor
        assert len(explained["offers"]) == 2
        views = await wait_usage(cluster, "did:icn:alice", 1)
        assert all(v.concurrent_tasks == 0 for v in views)
        assert [e.state for e in done.events] == [TaskState.ADMITTED, TaskState.PLACED, TaskState.RUNNING,
                                                  TaskState.COMPLETED]
        # a short run answers with its result alone (no separate acceptance)
        assert done.events[2].reason == f"ran on {done.executor}"


async def test_gdpr_tagged_task_stays_in_region(tmp_path):
    per_node = [{"roles": ["submitter"]}, {"region": "eu-central"}, {"region": "us-west"}]
    rules = [{"DataSovereignty": {"region": "eu-central", "tags": ["patient-data"]}}]
    async with start_nodes(3, tmp_path, topology="full", coops=[COOP], per_node=per_node) as cluster:
        a = cluster[0]
        await a.set_local_policy(policy(rules=rules))
        await wait_policy(cluster)
        for i in range(4):
            await a.compute.submit(task(i, tags=["patient-data"]), ADD.encode())
        for i in range(4):
            done = await a.compute.wait(f"t{i}", timeout=10)
            assert done.state is TaskState.COMPLETED, done.reason
            assert done.executor == cluster[1].did
        why = a.compute.explain("t0", cluster[2].did)
        assert "made no offer" in why["explanation"]
        us_west = cluster[2].did
        assert not [e for n in cluster.nodes for e in n.usage_store.entries(COOP)
                    if e.writer == us_west and e.tasks_completed]


async def test_quota_exhausted_via_one_node_blocks_member_on_another(tmp_path):
    async with start_nodes(3, tmp_path, topology="full", coops=[COOP]) as cluster:
        a, b = cluster[0], cluster[1]
        body = policy()
        body["default_quota"]["cpu_hours_per_month"] = 0.0000001  # well under one task's CPU time
        await a.set_local_policy(body)
        await wait_policy(cluster)
        await a.compute.submit(task(1), ADD.encode())
        done = await a.compute.wait("t1", timeout=10)
        assert done.state is TaskState.COMPLETED, done.reason
        await wait_usage(cluster, "did:icn:alice", 1)
        rejected = await b.compute.submit(task(2), ADD.encode())
        assert rejected.state is TaskState.REJECTED
        assert "CPU" in rejected.reason or "cpu" in rejected.reason


async def test_no_feasible_executor_waits_then_expires_with_reason(tmp_path):
    rules = [{"DataSovereignty": {"region": "antarctica", "tags": []}}]
    async with start_nodes(2, tmp_path, topology="full", coops=[COOP]) as cluster:
        a = cluster[0]
        await a.set_local_policy(policy(rules=rules))
        await wait_policy(cluster)
        import time
        deadline = time.time_ns() // 1_000_000 + 1500
        await a.compute.submit(task(1, deadline_ms=deadline), ADD.encode())
        with trio.fail_after(5):
            while (r := await a.compute.status("t1")).state is not TaskState.WAITING:
                await trio.sleep(0.02)
        assert any("antarctica" in w for w in r.waiting_for)
        done = await a.compute.wait("t1", timeout=5)
        assert done.state is TaskState.EXPIRED
        assert "antarctica" in done.reason
        usage = a.usage_store.member_usage(COOP, "did:icn:alice")
        assert usage.concurrent_tasks == 0


async def test_cancel_running_task(tmp_path):
    per_node = [{"roles": ["submitter"]}, {}]
    async with start_nodes(2, tmp_path, topology="full", coops=[COOP], per_node=per_node) as cluster:
        a = cluster[0]
        await a.set_local_policy(policy())
        await wait_policy(cluster)
        await a.compute.submit(task(1, entry="spin", args=[], fuel_limit=10**15), SPIN.encode())
        with trio.fail_after(5):
            while (await a.compute.status("t1")).state is not TaskState.RUNNING:
                await trio.sleep(0.02)
        # a long run is accepted first, then runs
        assert (await a.compute.status("t1")).events[-1].reason == f"running on {cluster[1].did}"
        done = await a.compute.cancel("t1")
        assert done.state is TaskState.CANCELLED
        with trio.fail_after(5):
            while cluster[1].compute._running:
                await trio.sleep(0.02)


async def test_trapping_module_fails_with_reason(tmp_path):
    async with start_nodes(2, tmp_path, topology="full", coops=[COOP]) as cluster:
        a = cluster[0]
        await a.set_local_policy(policy())
        await wait_policy(cluster)
        await a.compute.submit(task(1, entry="spin", args=[], fuel_limit=10_000), SPIN.encode())
        done = await a.compute.wait("t1", timeout=10)
        assert done.state is TaskState.FAILED
        assert "out_of_fuel" in done.reason


async def test_killed_executor_task_completes_elsewhere(tmp_path):
    # Node 1 takes the first claim (higher configured trust), then vanishes mid-run.
    per_node = [{"roles": ["submitter"]}, {}, {}]
    async with start_nodes(3, tmp_path, topology="full", coops=[COOP], per_node=per_node) as cluster:
        a, first, second = cluster[0], cluster[1], cluster[2]
        a.compute.trust.configure(first.did, 1.0)
        a.compute.trust.configure(second.did, 0.1)
        await a.set_local_policy(policy())
        await wait_policy(cluster)
        slow = '(module (func (export "work") (result i32) (local i32) (loop (local.set 0 (i32.add (local.get 0) (i32.const 1))) (br_if 0 (i32.lt_u (local.get 0) (i32.const 30000000)))) (local.get 0)))'
        await a.compute.submit(task(1, entry="work", args=[], fuel_limit=10**10), slow.encode())
        with trio.fail_after(5):
            while (await a.compute.status("t1")).state is not TaskState.RUNNING:
                await trio.sleep(0.01)
        assert (await a.compute.status("t1")).executor == first.did
        await cluster.stop_node(1)
        done = await a.compute.wait("t1", timeout=20)
        assert done.state is TaskState.COMPLETED, done.reason
        assert done.executor == second.did
        assert done.attempts == 1 and first.did in done.excluded_executors
        assert done.result["values"] == [30000000]


async def test_commons_task_spends_credits_earned_by_executing(tmp_path):
    per_node = [{}, {"roles": ["executor"]}]
    async with start_nodes(2, tmp_path, topology="full", coops=[COOP], per_node=per_node) as cluster:
        a, b = cluster[0], cluster[1]
        a.compute.trust.configure(a.did, 0.0)  # prefer the remote executor
        await a.set_local_policy(policy())
        await wait_policy(cluster)
        poor = "did:icn:newcomer"
        rejected = await a.compute.submit(task(1, member=poor, scope="Commons"), ADD.encode())
        assert rejected.state is TaskState.REJECTED
        assert "credit" in rejected.reason.lower()

        # b earns credits by executing a Commons task that a (well-funded by earlier work) submits:
        # credit the submitter directly through the replicated store to start the economy.
        rich = b.did
        await b.blocking(lambda: b.compute.tracker.credit_earned(COOP, rich, 5, "grant-1"))
        await b.compute._publish_own_usage(COOP)
        with trio.fail_after(10):
            while a.compute._credit_balance(COOP, rich) < 5:
                await trio.sleep(0.02)
        record = await a.compute.submit(task(2, member=rich, scope="Commons", fuel_limit=2_000_000), ADD.encode())
        assert record.state is TaskState.ADMITTED, record.reason
        assert a.compute.credits.get("t2").amount == 2  # estimate: 2M fuel at 1M fuel per credit
        done = await a.compute.wait("t2", timeout=10)
        assert done.state is TaskState.COMPLETED, done.reason
        res = a.compute.credits.get("t2")
        assert res.state == "settled" and res.settled_amount == 1  # a trivial run costs the minimum
        expected = 4 + (1 if done.executor == rich else 0)  # what b earns arrives by gossip
        with trio.fail_after(10):
            while a.compute._credit_balance(COOP, rich) != expected:
                await trio.sleep(0.02)


async def test_restarted_executor_that_forgot_the_task_is_detected_quickly(tmp_path):
    from icn_p2p.node.harness import node_config

    per_node = [{"roles": ["submitter"]}, {}, {}]
    fast = {"probe_interval_ms": 200, "probe_misses": 2}
    async with start_nodes(3, tmp_path, topology="full", coops=[COOP], per_node=per_node,
                           compute=fast) as cluster:
        a, first, second = cluster[0], cluster[1], cluster[2]
        a.compute.trust.configure(first.did, 1.0)
        a.compute.trust.configure(second.did, 0.1)
        await a.set_local_policy(policy())
        await wait_policy(cluster)
        slow = '(module (func (export "work") (result i32) (local i32) (loop (local.set 0 (i32.add (local.get 0) (i32.const 1))) (br_if 0 (i32.lt_u (local.get 0) (i32.const 200000000)))) (local.get 0)))'
        await a.compute.submit(task(1, entry="work", args=[], fuel_limit=10**11), slow.encode())
        with trio.fail_after(5):
            while (await a.compute.status("t1")).state is not TaskState.RUNNING:
                await trio.sleep(0.01)
        assert (await a.compute.status("t1")).executor == first.did
        await cluster.stop_node(1)
        # The same node comes back (same key, same peer id) knowing nothing of the task.
        back = await cluster.add_node(node_config(tmp_path, 1, coops=[COOP], compute=fast))
        await a.host.connect(back.listen_addrs()[0])
        with trio.fail_after(5):
            while (r := await a.compute.status("t1")).attempts < 1:
                await trio.sleep(0.05)
        assert first.did in r.excluded_executors
        assert "no longer runs" in r.reason or "left the mesh" in r.reason or "stopped answering" in r.reason
        await a.compute.cancel("t1")


async def test_a_burst_of_submissions_cannot_pass_the_concurrency_limit_together(tmp_path):
    async with start_nodes(2, tmp_path, topology="full", coops=[COOP]) as cluster:
        a = cluster[0]
        body = policy()
        body["default_quota"]["max_concurrent_tasks"] = 2
        await a.set_local_policy(body)
        await wait_policy(cluster)
        records = {}

        async def one(i):
            records[i] = await a.compute.submit(task(i, entry="spin", args=[], fuel_limit=10**15), SPIN.encode())

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(one, i)
        states = [r.state for r in records.values()]
        assert states.count(TaskState.ADMITTED) == 2 and states.count(TaskState.REJECTED) == 6
        for i, r in records.items():
            if r.state is TaskState.ADMITTED:
                await a.compute.cancel(r.task_id)


async def test_result_brings_the_executors_usage_before_the_slot_is_freed(tmp_path):
    """The submitter's view holds the run's fuel as soon as the task completes, without
    waiting for the executor's usage gossip or a sync (after the first task's entry
    went out at once, the executor's next gossip is a minute away)."""
    slow = {"compute": {"usage_flush_ms": 60_000}, "mesh": {"sync_interval_s": 600}}
    per_node = [{"roles": ["submitter"], "mesh": {"sync_interval_s": 600}}, {"roles": ["executor"], **slow}]
    async with start_nodes(2, tmp_path, topology="full", coops=[COOP], per_node=per_node) as cluster:
        a, b = cluster[0], cluster[1]
        await a.set_local_policy(policy())
        await wait_policy(cluster)
        fuel = 0
        for i in (1, 2):
            await a.compute.submit(task(i), ADD.encode())
            done = await a.compute.wait(f"t{i}", timeout=10)
            assert done.state is TaskState.COMPLETED, done.reason
            fuel += done.receipt["fuel_used"]
        view = a.usage_store.member_usage(COOP, "did:icn:alice")
        assert view.fuel_this_month == fuel > 0
        assert view.tasks_completed_this_month == 2 and view.concurrent_tasks == 0
        writers = {e.writer for e in a.usage_store.state.entries(COOP)}
        assert b.did in writers

        # an entry that is not the executor's own for this member is dropped and counted
        own = a.usage_store.own_signed(COOP, "did:icn:alice", view.month)
        before = counted("icn_messages_dropped_total", topic="direct", reason="bad_usage")
        t = ComputeTask.model_validate(done.task)
        assert a.compute._executor_usage(own.to_wire(), b.did, t) is None  # written by the submitter
        assert a.compute._executor_usage({"entry": {}}, b.did, t) is None  # malformed
        assert a.compute._executor_usage("garbage", b.did, t) is None
        assert counted("icn_messages_dropped_total", topic="direct", reason="bad_usage") == before + 3
        theirs = b.usage_store.own_signed(COOP, "did:icn:alice", view.month)
        assert isinstance(a.compute._executor_usage(theirs.to_wire(), b.did, t), SignedUsageEntry)


async def test_announcements_go_straight_to_recent_offerers_and_widely_after_silence(tmp_path):
    """Once enough executors offered for the coop, announcements go to them on direct
    streams; a task none of them answers is announced again by gossip and reaches
    the executor that never offered."""
    fast = {"offer_window_ms": 150, "compute": {"reannounce_ms": 50, "announce_refresh_ms": 600_000}}
    per_node = [{"roles": ["submitter"], **fast}] + [{"roles": ["executor"]} for _ in range(4)]
    async with start_nodes(5, tmp_path, topology="full", coops=[COOP], per_node=per_node) as cluster:
        a, quiet = cluster[0], cluster[4]
        await a.set_local_policy(policy())
        await wait_policy(cluster)
        for i in range(3):  # the first goes by gossip; the others' executors have offered by then
            await a.compute.submit(task(i, locality_hints={"avoid_executors": [quiet.did]}), ADD.encode())
            done = await a.compute.wait(f"t{i}", timeout=10)
            assert done.state is TaskState.COMPLETED, done.reason
        direct = counted("icn_announcements_total", path="direct")
        gossip = counted("icn_announcements_total", path="gossip")
        assert direct >= 1 and gossip >= 1

        others = [n.did for n in cluster.nodes[1:4]]
        await a.compute.submit(task(9, locality_hints={"avoid_executors": others}), ADD.encode())
        done = await a.compute.wait("t9", timeout=10)
        assert done.state is TaskState.COMPLETED, done.reason
        assert done.executor == quiet.did
        assert counted("icn_announcements_total", path="direct") == direct + 1  # to the three that offered
        assert counted("icn_announcements_total", path="gossip") >= gossip + 1  # then to everyone
        assert TaskState.WAITING in [e.state for e in done.events]


async def test_a_malformed_direct_announcement_is_dropped_and_counted(tmp_path):
    async with start_nodes(2, tmp_path, topology="full", coops=[COOP]) as cluster:
        a, b = cluster[0], cluster[1]
        before = counted("icn_messages_dropped_total", topic="direct", reason="bad_schema")
        await a.direct.notify(a.host.peer_for_did(b.did), "compute.announce",
                              {"submitter_node": a.did, "tasks": []})
        with trio.fail_after(5):
            while counted("icn_messages_dropped_total", topic="direct", reason="bad_schema") == before:
                await trio.sleep(0.02)
        # the stream and the executor carry on
        await a.set_local_policy(policy())
        await wait_policy(cluster)
        await a.compute.submit(task(1), ADD.encode())
        assert (await a.compute.wait("t1", timeout=10)).state is TaskState.COMPLETED


async def test_a_task_id_recorded_before_a_restart_is_refused_and_its_batch_mates_still_admitted(tmp_path):
    async with start_nodes(1, tmp_path, coops=[COOP]) as cluster:
        a = cluster[0]
        await a.set_local_policy(policy())
        await wait_policy(cluster)
        await a.compute.submit(task(1), ADD.encode())
        assert (await a.compute.wait("t1", timeout=10)).state is TaskState.COMPLETED
    async with start_nodes(1, tmp_path, coops=[COOP]) as cluster:  # same data directory
        a = cluster[0]
        outcomes = {}

        async def submit(i):
            try:
                outcomes[i] = (await a.compute.submit(task(i), ADD.encode())).state
            except SubmitError as exc:
                outcomes[i] = exc.reason

        async with trio.open_nursery() as nursery:  # submitted together: one admission batch
            for i in (1, 2):
                nursery.start_soon(submit, i)
        assert outcomes == {1: "duplicate_task", 2: TaskState.ADMITTED}
        assert (await a.compute.wait("t2", timeout=10)).state is TaskState.COMPLETED
        with pytest.raises(SubmitError, match="already submitted"):
            await a.compute.submit(task(2), ADD.encode())
