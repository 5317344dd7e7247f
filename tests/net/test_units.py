"""Pure parts of the network layer: penalties, rate budget, validation, peer ids."""

import pytest

from icn_p2p.identity.keys import IdentityError, NodeKey
from icn_p2p.net.gossip import TOPIC_POLICY, gossip_message_id, topic_label, usage_topic
from icn_p2p.net.host import backoff_delay
from icn_p2p.net.peers import PeerAddrError, did_for_peer, parse_peer_addr, peer_for_did
from icn_p2p.net.penalties import PenaltyBook, PenaltySettings, RateBudget, weight_of
from icn_p2p.net.validation import EnvelopeValidator, MessageKind, MessageTypes, Rejected
from icn_p2p.wire import ReplayGuard, Sealer, seal
from libp2p.pubsub.pb import rpc_pb2
import random


def test_penalties_decay_and_weights():
    book = PenaltyBook(PenaltySettings(hard_weight=25, soft_weight=2, ban_threshold=100, half_life_s=10))
    for _ in range(3):
        book.add("p", "malformed", 0.0)
    assert not book.over_threshold("p", 0.0)
    book.add("p", "bad_signature", 0.0)
    assert book.over_threshold("p", 0.0)
    assert book.score("p", 10.0) == pytest.approx(50.0)
    assert weight_of("replay", book.settings) == 2 and weight_of("queue_full", book.settings) == 0
    book.prune(1000.0)
    assert book.score("p", 1000.0) == 0.0


def test_rate_budget():
    b = RateBudget(rate=10, burst=5)
    assert all(b.allow("p", 0.0) for _ in range(5))
    assert not b.allow("p", 0.0)
    assert b.allow("p", 0.2)


def test_backoff_grows_and_is_capped():
    rng = random.Random(1)
    d = [backoff_delay(a, 0.25, 4.0, rng) for a in range(10)]
    assert d[0] <= 0.25 and max(d) <= 4.0 and d[-1] >= 2.0


def test_peer_did_mapping_and_addrs():
    key = NodeKey.generate()
    pid = peer_for_did(key.did)
    assert did_for_peer(pid) == key.did
    with pytest.raises(IdentityError):
        peer_for_did("did:icn:someone")
    with pytest.raises(PeerAddrError):
        parse_peer_addr("/ip4/127.0.0.1/tcp/1")


def test_topics_and_ids():
    assert usage_topic("c1") == "icn/usage/1/c1"
    assert topic_label("icn/usage/1/c1") == "icn/usage/1"
    with pytest.raises(ValueError):
        usage_topic("a/b")
    assert len(gossip_message_id(rpc_pb2.Message(data=b"junk"))) == 32
    kind = MessageKind("usage.entry", "icn/usage/1/*")
    assert kind.matches_topic("icn/usage/1/c1")
    assert not kind.matches_topic("icn/usage/1/") and not kind.matches_topic("icn/usage/1/a/b")


def test_validator_reasons():
    key = NodeKey.generate()
    types = MessageTypes()
    types.register("policy.act", TOPIC_POLICY, lambda env, topic: "bad_schema" if env.payload == "x" else None)
    v = EnvelopeValidator(types, ReplayGuard())
    s = Sealer(key)
    ok = s.seal("policy.act", {"a": 1})
    assert v.validate(ok, TOPIC_POLICY).payload == {"a": 1}

    def reason(data, topic=TOPIC_POLICY, **kw):
        with pytest.raises(Rejected) as err:
            v.validate(data, topic, **kw)
        return err.value.reason

    assert reason(ok) == "replay"
    assert v.validate(ok, TOPIC_POLICY, check_replay=False)
    assert reason(s.seal("policy.act", {"a": 2}), "icn/compute/1") == "wrong_topic"
    assert reason(s.seal("other.type", 1)) == "unknown_type"
    assert reason(s.seal("policy.act", "x")) == "bad_schema"
    assert reason(b"\x00" * 10) == "malformed"
    assert reason(b"\x00" * (300 * 1024)) == "too_large"
    assert reason(s.seal("policy.act", 3), expect_type="usage.entry") == "wrong_topic"
    stale = seal(key, "policy.act", 1, seq=1, ts=1000)
    assert reason(stale) == "stale"
