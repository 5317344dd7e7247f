"""Usage gossip many entries to a message: the schema, and batches across a real mesh."""

import trio

from icn_p2p.identity import NodeKey
from icn_p2p.node.harness import start_nodes
from icn_p2p.node.sources import MAX_USAGE_BATCH, USAGE_ENTRIES, usage_entries_schema
from icn_p2p.usage.crdt import SignedUsageEntry, UsageEntry
from icn_p2p.wire import Reason, Sealer, open_envelope

COOP = "coop-u"
TOPIC = f"icn/usage/1/{COOP}"
ME, OTHER = NodeKey(b"\x05" * 32), NodeKey(b"\x06" * 32)


def _entry(key, member="did:icn:m", coop=COOP, cpu_ms=10):
    return SignedUsageEntry.sign(UsageEntry(coop, member, "2026-12", key.did, 1, cpu_ms), key).to_wire()


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
