"""Real libp2p hosts on 127.0.0.1: policy acts spread, forgeries spread nowhere."""

import time

import cbor2

import trio

from icn_p2p.metrics import MESSAGES_DROPPED
from icn_p2p.net.gossip import TOPIC_POLICY
from icn_p2p.node.harness import start_nodes
from icn_p2p.node.sources import POLICY_ACT
from icn_p2p.policy.governance import make_local_act
from icn_p2p.wire import dumps, seal


async def wait_until(pred, timeout=10.0, step=0.02):
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(step)


def dropped(topic: str, reason: str) -> float:
    return MESSAGES_DROPPED.labels(topic=topic, reason=reason)._value.get()


async def test_policy_act_reaches_every_node_of_a_line(tmp_path, policy):
    async with start_nodes(10, tmp_path, topology="line", mesh={"sync_interval_s": 3600}) as c:
        result = await c[0].set_local_policy(policy("coop-a", 5.0))
        assert result.accepted
        await wait_until(lambda: all("coop-a" in n.policy_heads() for n in c.nodes))
        heads = {n.policy_heads()["coop-a"] for n in c.nodes}
        assert len(heads) == 1
        assert c[9].current_policy("coop-a").policy.default_quota.cpu_hours_per_month == 5.0


async def raw_publish(node, topic: str, data: bytes) -> None:
    """Publish as a misbehaving node would: straight into pubsub, past our own validator."""
    node.gossip.pubsub.remove_topic_validator(topic)
    await node.gossip.pubsub.publish(topic, data)


def sealed_act(key, coop, policy, *, seq, ts):
    act = make_local_act(key, policy(coop), version=1, parent_hash=None, created_at_ms=ts)
    return seal(key, POLICY_ACT, act.to_wire(), seq=seq, ts=ts)


async def assert_dropped_at_first_hop_only(c, reason, before):
    label = TOPIC_POLICY
    await wait_until(lambda: c[1].gossip.dropped[(label, reason)] == before[1] + 1)
    # Let anything that might still be in flight arrive, then check nobody beyond hop 1 saw it.
    await c[1].gossip.flush()
    for i in range(2, len(c)):
        assert c[i].gossip.dropped[(label, reason)] == before[i]


async def test_forged_messages_are_held_and_forwarded_by_none(tmp_path, policy):
    async with start_nodes(6, tmp_path, topology="line", mesh={"sync_interval_s": 3600}) as c:
        bad, key = c[0], c[0].key
        now = time.time_ns() // 1_000_000
        delivered_before = [n.gossip.delivered[TOPIC_POLICY] for n in c.nodes]

        # 1. valid signature over a body, signature corrupted
        outer = cbor2.loads(sealed_act(key, "forged-sig", policy, seq=10**15, ts=now))
        data = dumps({"body": outer["body"], "sig": bytes(64)})
        before = [n.gossip.dropped[(TOPIC_POLICY, "bad_signature")] for n in c.nodes]
        g0 = dropped(TOPIC_POLICY, "bad_signature")
        await raw_publish(bad, TOPIC_POLICY, bytes(data))
        await assert_dropped_at_first_hop_only(c, "bad_signature", before)
        assert dropped(TOPIC_POLICY, "bad_signature") == g0 + 1

        # 2. garbage bytes
        before = [n.gossip.dropped[(TOPIC_POLICY, "malformed")] for n in c.nodes]
        await raw_publish(bad, TOPIC_POLICY, b"\xff\x00 not an envelope")
        await assert_dropped_at_first_hop_only(c, "malformed", before)

        # 3. a valid envelope replayed after the network forgot having seen it
        legit = sealed_act(key, "replayed", policy, seq=2 * 10**15, ts=now)
        await raw_publish(bad, TOPIC_POLICY, legit)
        await wait_until(lambda: all("replayed" in n.policy_heads() for n in c.nodes[1:]))
        for n in c.nodes:
            n.gossip.pubsub.seen_messages.cache.clear()  # as if the seen-cache had expired
        before = [n.gossip.dropped[(TOPIC_POLICY, "replay")] for n in c.nodes]
        delivered_mid = [n.gossip.delivered[TOPIC_POLICY] for n in c.nodes]
        await raw_publish(bad, TOPIC_POLICY, legit)
        await assert_dropped_at_first_hop_only(c, "replay", before)
        assert [n.gossip.delivered[TOPIC_POLICY] for n in c.nodes[1:]] == delivered_mid[1:]

        for n in c.nodes[1:]:
            assert "forged-sig" not in n.policy_heads()
        # only the replayed act's first, legitimate copy was ever delivered beyond the sender
        assert [n.gossip.delivered[TOPIC_POLICY] - b for n, b in zip(c.nodes[1:], delivered_before[1:])] \
            == [1] * (len(c) - 1)


async def test_honest_duplicates_never_penalise(tmp_path, policy):
    # A ring gives every message two paths to each node.
    async with start_nodes(6, tmp_path, topology="ring", mesh={"sync_interval_s": 3600}) as c:
        for i in range(5):
            assert (await c[i].set_local_policy(policy(f"dup-{i}"))).accepted
        await wait_until(lambda: all(len(n.policy_heads()) == 5 for n in c.nodes))
        for n in c.nodes:
            assert sum(n.gossip.dropped.values()) == 0
            for p in n.host.connected_peers():
                assert n.gossip.penalties.score(p, trio.current_time()) == 0


async def test_garbage_sender_is_banned_and_the_mesh_keeps_working(tmp_path, policy):
    async with start_nodes(5, tmp_path, topology="ring", mesh={"sync_interval_s": 3600}) as c:
        bad = c[0]
        for i in range(6):
            await raw_publish(bad, TOPIC_POLICY, b"garbage %d" % i)
        await wait_until(lambda: c[1].host.is_banned(bad.peer_id) and c[4].host.is_banned(bad.peer_id))
        await wait_until(lambda: not c[1].host.is_connected(bad.peer_id)
                         and not c[4].host.is_connected(bad.peer_id))
        # the bad node's persistent redial is refused while the ban lasts
        await trio.sleep(0.6)
        assert not c[1].host.is_connected(bad.peer_id)
        # the rest of the ring (1-2-3-4) still carries policy
        assert (await c[2].set_local_policy(policy("after-ban"))).accepted
        await wait_until(lambda: all("after-ban" in n.policy_heads() for n in c.nodes[1:]))
        assert "after-ban" not in bad.policy_heads()
