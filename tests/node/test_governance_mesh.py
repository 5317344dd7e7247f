"""Governed policy updates across a real mesh (libp2p on 127.0.0.1, SQLite per node)."""

import logging
import time

import trio

from icn_p2p.core.task import ComputeTask
from icn_p2p.identity.keys import NodeKey
from icn_p2p.net.gossip import TOPIC_POLICY
from icn_p2p.node.harness import partition, start_nodes
from icn_p2p.node.sources import POLICY_ACT
from icn_p2p.policy.governance import DomainGenesis, PolicyAct, PolicyProposal

logging.getLogger("libp2p").setLevel(logging.CRITICAL)

COOP = "coop-g"
DOMAIN = "gov:coop-g"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def body(cpu: float, domain: str | None = DOMAIN) -> dict:
    return {"coop_id": COOP, "governance_domain": domain,
            "default_quota": {"cpu_hours_per_month": cpu, "max_concurrent_tasks": 3, "max_priority": "High"}}


async def until(predicate, timeout=10.0):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


def heads(cluster):
    return [n.policy_heads().get(COOP) for n in cluster.nodes]


async def found(cluster, members, threshold):
    genesis = DomainGenesis.create(DOMAIN, [cluster[i].key for i in members], threshold, now_ms())
    result = await cluster[members[0]].governance.found_domain(genesis)
    assert result.accepted, result
    await until(lambda: all(n.policy_store.domain_state(DOMAIN) for n in cluster.nodes))
    return genesis


async def test_approved_act_takes_effect_everywhere_and_history_explains_it(tmp_path):
    async with start_nodes(4, tmp_path, topology="line", coops=[COOP]) as cluster:
        await found(cluster, [0, 1, 2], 2)
        result, proposal = await cluster[0].governance.propose(body(10.0), reason="first policy")
        assert result.reason == "pending"
        await until(lambda: cluster[2].policy_store.pending(COOP))
        assert all(h is None for h in heads(cluster))  # one signature of two: nowhere in force
        approved = await cluster[2].governance.approve(proposal.proposal_id)
        assert approved.accepted
        await until(lambda: all(h and h.version == 1 for h in heads(cluster)))
        assert len({h.policy_hash for h in heads(cluster)}) == 1

        result, proposal = await cluster[1].governance.propose(body(20.0), reason="more hours")
        await cluster[0].governance.approve(proposal.proposal_id)
        await until(lambda: all(h and h.version == 2 for h in heads(cluster)))
        history = cluster[3].policy_store.history(COOP)
        assert [v.version for v in history] == [1, 2]
        assert history[1].proposer == cluster[1].did
        assert set(history[1].approvers) == {cluster[1].did, cluster[0].did}
        assert history[1].reason == "more hours"
        assert "cpu_hours_per_month" in str(history[1].diff)

        # Rollback is a new version with the old body, approved the same way.
        result, proposal = await cluster[0].governance.rollback(COOP, 1)
        await cluster[2].governance.approve(proposal.proposal_id)
        await until(lambda: all(h and h.version == 3 for h in heads(cluster)))
        v1, v3 = cluster[3].policy_store.get(COOP, 1), cluster[3].policy_store.get(COOP, 3)
        assert v3.policy_hash == v1.policy_hash


async def test_outsiders_act_takes_effect_nowhere(tmp_path):
    async with start_nodes(4, tmp_path, topology="full", coops=[COOP]) as cluster:
        await found(cluster, [0, 1], 2)
        outsiders = [NodeKey.generate(), NodeKey.generate()]
        state = cluster[3].policy_store.domain_state(DOMAIN)
        forged = PolicyProposal.create(outsiders[0], body(999.0), version=1, parent_hash=None,
                                       created_at_ms=now_ms(), domain_state=state, expires_at_ms=now_ms() + 60_000)
        act = PolicyAct(proposal=forged, approvals=(forged.approve(outsiders[1], now_ms()),))
        # Node 3 is not a member either; it gossips the act without judging it itself.
        await cluster[3].publish(TOPIC_POLICY, POLICY_ACT, act.to_wire())
        direct = await cluster[0].blocking(cluster[0].policy_store.apply_act, act.to_wire(), now_ms())
        assert not direct.accepted
        await trio.sleep(0.5)
        await cluster[1].sync.sync_all()
        assert all(h is None for h in heads(cluster))


async def test_conflicting_acts_in_a_partition_converge_after_heal(tmp_path):
    async with start_nodes(4, tmp_path, topology="full", coops=[COOP]) as cluster:
        await found(cluster, [0, 1, 2, 3], 2)
        result, p = await cluster[0].governance.propose(body(10.0))
        await cluster[1].governance.approve(p.proposal_id)
        await until(lambda: all(h and h.version == 1 for h in heads(cluster)))

        cut = await partition(cluster, [0, 1], [2, 3])
        _, left = await cluster[0].governance.propose(body(11.0), reason="left")
        await cluster[1].governance.approve(left.proposal_id)
        _, right = await cluster[2].governance.propose(body(12.0), reason="right")
        await cluster[3].governance.approve(right.proposal_id)
        await until(lambda: heads(cluster)[0].version == 2 and heads(cluster)[2].version == 2)
        assert heads(cluster)[0].act_id != heads(cluster)[2].act_id  # each side took its own

        await cut.heal()
        await until(lambda: len({h.act_id for h in heads(cluster)}) == 1, timeout=20)
        assert heads(cluster)[0].version == 2
        # The losing act follows by sync (digests differ while a node lacks it) and is kept, marked.
        both = {left.proposal_id, right.proposal_id}
        await until(lambda: all({v.act_id for v in n.policy_store.history(COOP)} >= both for n in cluster.nodes),
                    timeout=20)
        for node in cluster.nodes:
            statuses = {v.act_id: v.status for v in node.policy_store.history(COOP)}
            assert sorted(statuses[i] for i in both)[0] == "active"  # one wins, the other is kept


async def test_late_joiner_learns_domain_and_policy_through_sync(tmp_path):
    async with start_nodes(2, tmp_path, topology="full", coops=[COOP]) as cluster:
        await found(cluster, [0, 1], 1)
        result, _ = await cluster[0].governance.propose(body(10.0))
        assert result.accepted
        from icn_p2p.node.harness import node_config

        late = await cluster.add_node(node_config(tmp_path, 2, coops=[COOP]))
        cluster.edges.append((1, 2))
        await cluster.link(2, 1)
        await until(lambda: (h := late.policy_heads().get(COOP)) is not None and h.version == 1)
        assert late.policy_store.domain_state(DOMAIN) is not None


async def test_task_keeps_the_policy_version_it_was_admitted_under(tmp_path):
    async with start_nodes(2, tmp_path, topology="full", coops=[COOP]) as cluster:
        a = cluster[0]
        await a.set_local_policy(body(10.0, domain=None))
        await until(lambda: all(h and h.version == 1 for h in heads(cluster)))
        spin = b'(module (func (export "spin") (loop br 0)))'
        first = await a.compute.submit(ComputeTask(id="old", coop_id=COOP, submitter="did:icn:m", entry="spin",
                                                   fuel_limit=10**15), spin)
        await a.set_local_policy(body(20.0, domain=None))
        await until(lambda: all(h and h.version == 2 for h in heads(cluster)))
        second = await a.compute.submit(ComputeTask(id="new", coop_id=COOP, submitter="did:icn:m", entry="spin",
                                                    fuel_limit=10**15), spin)
        assert first.policy_version == 1 and second.policy_version == 2
        assert first.policy_hash != second.policy_hash
        assert (await a.compute.status("old")).policy_hash == first.policy_hash
        assert a.policy_store.get_by_hash(first.policy_hash).default_quota.cpu_hours_per_month == 10.0
        for task_id in ("old", "new"):
            await a.compute.cancel(task_id)
