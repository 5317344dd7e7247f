import pytest
from pydantic import ValidationError

from icn_p2p.scheduler.offer import Offer
from icn_p2p.scheduler.trust import TrustBook

from .factories import offer


def test_offer_rtt_from_wire_is_replaced_not_trusted():
    raw = offer("did:key:a", rtt_ms=1.0).model_dump(mode="json")
    raw["rtt_ms"] = 0.0  # the executor claims to be next door
    o = Offer.from_wire(raw)
    assert o.rtt_ms is None
    assert Offer.from_wire(raw, rtt_ms=42).rtt_ms == 42.0
    assert o.did == "did:key:a"


def test_offer_rejects_bad_input():
    with pytest.raises(ValidationError):
        Offer.from_wire({"task_id": "", "executor": {"did": "x"}, "offered_at_ms": 0})
    with pytest.raises(ValidationError):
        Offer(task_id="t", executor=offer("a").executor, rtt_ms=-1, offered_at_ms=0)
    with pytest.raises(ValidationError):
        Offer.from_wire("not an offer")


def test_new_executor_sits_at_its_prior():
    book = TrustBook()
    assert book.effective("a", 0.7) == pytest.approx(0.7)
    assert book.effective("a") == pytest.approx(0.5)


def test_configured_prior_overrides_claim():
    book = TrustBook(configured={"a": 0.2})
    assert book.effective("a", 0.99) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        book.configure("b", 1.5)


def test_blend_matches_beta_formula():
    book = TrustBook(prior_weight=10)
    for i in range(8):
        book.record_success("a", i)
    for i in range(2):
        book.record_failure("a", 10 + i)
    # (8 + 0.5 * 10) / (10 + 10)
    assert book.effective("a", 0.5) == pytest.approx(13 / 20)
    assert book.observed("a") == (8.0, 2.0)


def test_failures_lower_trust_successes_raise_it():
    book = TrustBook()
    for i in range(5):
        book.record_failure("bad", i)
        book.record_success("good", i)
    assert book.effective("bad", 0.8) < 0.8 < book.effective("good", 0.8)
    # a long record dominates the prior
    for i in range(1000):
        book.record_failure("bad", i)
    assert book.effective("bad", 1.0) < 0.02


def test_decay_fades_record_back_to_prior():
    book = TrustBook(half_life_ms=1000)
    for _ in range(10):
        book.record_failure("a", 0)
    fresh = book.effective("a", 0.9, now_ms=0)
    later = book.effective("a", 0.9, now_ms=1000)
    much_later = book.effective("a", 0.9, now_ms=100_000)
    assert fresh == pytest.approx(9 / 20)
    assert fresh < later < much_later
    assert much_later == pytest.approx(0.9, abs=1e-6)
    s, f = book.observed("a", now_ms=1000)
    assert (s, f) == (0.0, pytest.approx(5.0))
    book.record_success("a", 1000)  # old failures halve, then one success
    assert book.observed("a", now_ms=1000) == (1.0, pytest.approx(5.0))


def test_round_trip_dict():
    book = TrustBook(prior_weight=4, configured={"c": 0.3}, half_life_ms=500)
    book.record_success("a", 5)
    book.record_failure("b", 7)
    again = TrustBook.from_dict(book.to_dict())
    assert again.to_dict() == book.to_dict()
    for did in ("a", "b", "c"):
        assert again.effective(did, 0.6, 10) == book.effective(did, 0.6, 10)


@pytest.mark.parametrize("bad", [
    {"records": {"a": {"successes": -1, "failures": 0}}},
    {"records": {"a": {"failures": 0}}},
    {"records": {"a": 5}},
    {"prior_weight": 0},
    {"half_life_ms": -5},
    {"configured": {"a": 7}},
])
def test_malformed_book_is_a_clear_error(bad):
    with pytest.raises(ValueError):
        TrustBook.from_dict(bad)


def test_offer_counts_only_the_claims_sent_after_it():
    o = offer("did:key:a", offered_at_ms=1_000, queue_depth=2)
    assert o.with_claims_since([]) is o
    assert o.with_claims_since([500, 900]) is o  # older claims are in its queue depth already
    later = o.with_claims_since([900, 1_000, 1_200])
    assert later.executor.queue_depth == 4
    assert later.did == o.did and later.offered_at_ms == o.offered_at_ms


def test_a_burst_spreads_over_executors_once_claims_are_counted():
    from icn_p2p.core.decision import PlacementConstraints
    from icn_p2p.scheduler import place

    from .factories import task

    claims: dict[str, list[int]] = {}
    winners = []
    for i in range(6):  # every offer made before any claim, as in one window of a burst
        offers = [offer(did, task_id=f"t{i}", offered_at_ms=0, capacity={"cpu_free": 1.0, "memory_free": 1.0})
                  for did in ("did:key:a", "did:key:b", "did:key:c")]
        seen = [o.with_claims_since(claims.get(o.did, [])) for o in offers]
        decision = place(task(f"t{i}"), PlacementConstraints(), seen, trust=TrustBook(), min_trust=0.0, now_ms=1)
        winners.append(decision.winner)
        claims.setdefault(decision.winner, []).append(1)
    assert set(winners) == {"did:key:a", "did:key:b", "did:key:c"}
