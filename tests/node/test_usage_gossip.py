"""Usage gossip many entries to a message: the schema, and batches across a real mesh."""

import trio

from icn_p2p.core.clock import month_key
from icn_p2p.identity import NodeKey
from icn_p2p.node.harness import start_nodes
from icn_p2p.node.sources import MAX_USAGE_BATCH, USAGE_ENTRIES, usage_entries_schema
from icn_p2p.usage.crdt import SignedUsageEntry, UsageEntry
from icn_p2p.wire import Reason, Sealer, open_envelope

COOP = "coop-u"
TOPIC = f"icn/usage/1/{COOP}"
ME, OTHER = NodeKey(b"\x05" * 32), NodeKey(b"\x06" * 32)


def _entry(key, member="did:icn:m", coop=COOP, cpu_ms=10, version=1):
    return SignedUsageEntry.sign(UsageEntry(coop, member, "2026-12", key.did, version, cpu_ms), key).to_wire()


def _judge(payload, key=ME, topic=TOPIC):
    env = open_envelope(Sealer(key).seal(USAGE_ENTRIES, payload))
    return usage_entries_schema(env, topic)


def test_a_batch_of_own_entries_for_the_topics_coop_passes():
    assert _judge({"coop_id": COOP, "entries": [_entry(ME, f"did:icn:m{i}") for i in range(3)]}) is None


def test_a_batch_carrying_someone_elses_entry_is_refused():
    # each node gossips only what it wrote: a relay cannot slip in another writer's slot
    batch = {"coop_id": COOP, "entries": [_entry(ME), _entry(OTHER)]}
    assert _judge(batch) == Reason.BAD_SIGNER


def test_malformed_batches_are_refused_with_their_reason():
    assert _judge({"coop_id": COOP, "entries": []}) == Reason.BAD_SCHEMA
    assert _judge({"coop_id": COOP, "entries": [_entry(ME)] * (MAX_USAGE_BATCH + 1)}) == Reason.BAD_SCHEMA
    assert _judge({"coop_id": COOP, "entries": [{"entry": 1}]}) == Reason.BAD_SCHEMA
    assert _judge({"coop_id": COOP, "entries": [_entry(ME)], "extra": 1}) == Reason.BAD_SCHEMA
    assert _judge({"coop_id": "other", "entries": [_entry(ME, coop="other")]}) == Reason.WRONG_TOPIC
    assert _judge({"coop_id": COOP, "entries": [_entry(ME, coop="other")]}) == Reason.WRONG_TOPIC


def test_a_vouched_span_must_hold_every_entry_of_the_batch():
    batch = {"coop_id": COOP, "entries": [_entry(ME, "did:icn:a", version=3), _entry(ME, "did:icn:b", version=5)]}
    assert _judge({**batch, "since": 2, "through": 5}) is None
    assert _judge({**batch, "since": 3, "through": 5}) == Reason.BAD_SCHEMA  # version 3 is not after 3
    assert _judge({**batch, "since": 2, "through": 4}) == Reason.BAD_SCHEMA  # version 5 is past 4
    assert _judge({**batch, "since": 2}) == Reason.BAD_SCHEMA  # both or neither
    assert _judge({**batch, "through": 5}) == Reason.BAD_SCHEMA
    assert _judge({**batch, "since": 5, "through": 5}) == Reason.BAD_SCHEMA
    assert _judge({**batch, "since": True, "through": 5}) == Reason.BAD_SCHEMA
    assert _judge({**batch, "since": -1, "through": 5}) == Reason.BAD_SCHEMA


async def _churn(node, members, rounds):
    """Change each member's entry ``rounds`` times, so most versions are superseded before a flush."""
    for _ in range(rounds):
        for m in members:
            await node.blocking(lambda m=m: node.usage_store.increment(COOP, m, cpu_ms=1))
    node.compute._usage_changed(COOP)


async def test_watermarks_keep_up_by_gossip_alone_though_superseded_versions_never_travel(tmp_path):
    # sync runs only on connect here: after that, a watermark can rise only by gossip
    async with start_nodes(3, tmp_path, topology="line", coops=[COOP], mesh={"sync_interval_s": 600}) as cluster:
        a, far = cluster[0], cluster[2]
        members = [f"did:icn:m{i}" for i in range(5)]
        for _ in range(3):
            await _churn(a, members, rounds=2)
            mine = a.usage_store.version_vector(COOP)[a.did]
            with trio.fail_after(10):
                while far.usage_store.version_vector(COOP).get(a.did, 0) < mine:
                    await trio.sleep(0.02)
            assert far.usage_store.digest(COOP) == a.usage_store.digest(COOP)
        # complete through the writer's own version: a sync pull from `far` now asks for nothing of a's
        assert far.usage_store.delta_since(COOP, far.usage_store.version_vector(COOP)) == []


async def test_a_node_missing_part_of_its_own_history_vouches_for_nothing(tmp_path):
    async with start_nodes(2, tmp_path, topology="line", coops=[COOP], mesh={"sync_interval_s": 600}) as cluster:
        a, b = cluster
        # an entry a wrote before it lost its data, restored from a peer: versions 1..49 are not here
        restored = SignedUsageEntry.sign(UsageEntry(COOP, "did:icn:old", month_key(a.now_ms()), a.did, 50, 1),
                                         a.key)
        assert (await a.blocking(a.usage_store.merge, [restored])).accepted == 1
        await _churn(a, ["did:icn:new"], rounds=1)  # version 51
        with trio.fail_after(10):
            while "did:icn:new" not in b.usage_store.members(COOP):
                await trio.sleep(0.02)
        assert b.usage_store.version_vector(COOP).get(a.did, 0) == 0


async def test_many_entries_travel_together_and_reach_every_node(tmp_path):
    async with start_nodes(3, tmp_path, topology="line", coops=[COOP]) as cluster:
        a = cluster[0]
        entries = []
        for i in range(MAX_USAGE_BATCH + 10):  # more than one message's worth
            entry = await a.blocking(lambda i=i: a.usage_store.increment(COOP, f"did:icn:m{i}", cpu_ms=1))
            entries.append(SignedUsageEntry.sign(entry, a.key))
        before = a.gossip.published
        await a.publish_usage(COOP, entries)
        with trio.fail_after(10):
            while len(cluster[2].usage_store.members(COOP)) < len(entries):
                await trio.sleep(0.02)
        assert a.gossip.published - before == 2  # 266 entries, two messages
