import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icn_p2p.core.decision import PlacementConstraints
from icn_p2p.core.task import Capacity, ExecutorInfo
from icn_p2p.scheduler.feasibility import MinTrustFilter
from icn_p2p.scheduler.offer import Offer
from icn_p2p.scheduler.placement import PlacementDecision, feasibility_check, place
from icn_p2p.scheduler.ranking import QueueRanker
from icn_p2p.scheduler.trust import TrustBook

from .factories import offer, task

NONE = PlacementConstraints()


def run(t, offers, constraints=NONE, min_trust=0.0, book=None, now_ms=0, **kw):
    return place(t, constraints, offers, trust=book or TrustBook(), min_trust=min_trust, now_ms=now_ms, **kw)


def test_best_score_wins_and_ranked_is_fallback_order():
    offers = [offer("did:key:a", queue_depth=5), offer("did:key:b", queue_depth=0), offer("did:key:c", queue_depth=9)]
    d = run(task(), offers)
    assert d.placed and d.winner == "did:key:b"
    assert d.ranked == ["did:key:b", "did:key:a", "did:key:c"]
    assert [d.result(x).rank for x in d.ranked] == [0, 1, 2]
    assert d.waiting_for == []


def test_tie_breaks_by_smallest_did():
    offers = [offer("did:key:zz"), offer("did:key:mm"), offer("did:key:aa")]
    for order in (offers, offers[::-1], [offers[1], offers[0], offers[2]]):
        d = run(task(), order)
        assert d.winner == "did:key:aa"
        assert d.ranked == ["did:key:aa", "did:key:mm", "did:key:zz"]
    assert "by DID order" in d.explain("did:key:aa")
    assert "tied with did:key:aa" in d.explain("did:key:mm")


def test_avoided_executor_is_infeasible_even_when_best():
    t = task(hints={"avoid_executors": ["did:key:best"]})
    d = run(t, [offer("did:key:best", trust=1.0, rtt_ms=1.0), offer("did:key:meh", trust=0.1, queue_depth=8)])
    assert d.winner == "did:key:meh"
    r = d.result("did:key:best")
    assert not r.feasible and r.excluded_by.filter == "avoid" and r.score is None
    assert d.explain("did:key:best") == "did:key:best is infeasible (avoid): the task's locality hints avoid this executor"


def test_explain_winner_and_loser_name_the_components():
    offers = [offer("did:key:a", queue_depth=0, rtt_ms=10.0), offer("did:key:b", queue_depth=7, rtt_ms=10.0)]
    d = run(task(), offers)
    win, lose = d.explain("did:key:a"), d.explain("did:key:b")
    # a: 0.125 trust + 0.2 capacity + 0.15 queue + 0.147 rtt + 0.15 locality; b: queue 0.045
    assert win.startswith("did:key:a won over did:key:b: 0.772 vs 0.667")
    assert lose.startswith("did:key:b lost to did:key:a: 0.667 vs 0.772")
    assert "queue 0.045 vs 0.150 (queue_depth 7 vs queue_depth 0)" in lose
    assert "rtt" not in lose  # equal components are not reasons


def test_explain_single_offer_and_unknown_did():
    d = run(task(), [offer("did:key:a", rtt_ms=None)])
    text = d.explain("did:key:a")
    assert "the only feasible offer" in text and "rtt 0.000/0.15 (rtt_ms unknown)" in text
    assert d.explain("did:key:nobody") == "did:key:nobody made no offer for task t1"


def test_constraint_exclusion_is_explained():
    c = PlacementConstraints(required_region="eu-central")
    d = run(task(), [offer("did:key:us", region="us-west"), offer("did:key:eu", region="eu-central")], c)
    assert d.winner == "did:key:eu"
    assert d.explain("did:key:us") == (
        "did:key:us is infeasible (constraints): region us-west is not the required eu-central")


def test_nothing_feasible_says_what_the_task_waits_for():
    c = PlacementConstraints(required_region="eu-central")
    offers = [offer("did:key:a", region="us-west"), offer("did:key:b", region="us-west"),
              offer("did:key:c", region="eu-central", trust=0.1)]
    d = run(task(), offers, c, min_trust=0.5)
    assert not d.placed and d.winner is None and d.ranked == []
    assert d.waiting_for == [
        "2 of 3 offers excluded by constraints: region us-west is not the required eu-central (x2)",
        "1 of 3 offers excluded by min_trust: trust 0.100 is below the minimum 0.500",
    ]


def test_no_offers_and_conflicting_constraints():
    assert run(task(), []).waiting_for == ["no offers yet"]
    c = PlacementConstraints(conflicts=["DataSovereignty requires both eu-central and us-west"])
    d = run(task(), [offer("did:key:a")], c)
    assert d.waiting_for[0] == "constraints conflict: DataSovereignty requires both eu-central and us-west"
    assert not d.placed


def test_observed_failures_can_flip_the_winner():
    offers = [offer("did:key:a", trust=0.9), offer("did:key:b", trust=0.8)]
    book = TrustBook()
    assert run(task(), offers, book=book).winner == "did:key:a"
    for i in range(10):
        book.record_failure("did:key:a", i)
    d = run(task(), offers, book=book)
    assert d.winner == "did:key:b"
    assert "trust" in d.explain("did:key:a")


def test_duplicate_offers_keep_the_latest():
    old = offer("did:key:a", queue_depth=0, offered_at_ms=1)
    new = offer("did:key:a", queue_depth=9, offered_at_ms=2)
    d = run(task(), [old, new, offer("did:key:b", queue_depth=5)])
    assert d.winner == "did:key:b"
    r = d.result("did:key:a")
    assert r.feasible and r.breakdown["queue"].inputs == {"queue_depth": 9}
    dup = [x for x in d.results if x.excluded_by and x.excluded_by.filter == "duplicate"]
    assert len(dup) == 1
    d2 = run(task(), [new, old])  # arrival order does not matter
    assert d2.result("did:key:a").breakdown["queue"].inputs == {"queue_depth": 9}


def test_offer_for_another_task_is_excluded():
    d = run(task("t1"), [offer("did:key:a", task_id="t9")])
    assert not d.placed and "excluded by task" in d.waiting_for[0]


def test_custom_pipeline():
    offers = [offer("did:key:a", queue_depth=1, trust=0.0), offer("did:key:b", queue_depth=0, trust=0.0)]
    d = run(task(), offers, min_trust=0.5, filters=[], rankers=[QueueRanker()])
    assert d.winner == "did:key:b" and d.result("did:key:a").score == pytest.approx(0.135)
    d = run(task(), offers, min_trust=0.5, filters=[MinTrustFilter()])
    assert not d.placed


def test_feasibility_check_predicate():
    pred = feasibility_check(task(), PlacementConstraints(required_region="eu"), trust=TrustBook(),
                             min_trust=0.0, now_ms=0)
    assert pred(offer("a", region="eu")) and not pred(offer("b", region="us"))


def test_decision_serialises_and_round_trips():
    d = run(task(), [offer("did:key:a"), offer("did:key:b", region="x", trust=0.1)], min_trust=0.3)
    again = PlacementDecision.model_validate_json(d.model_dump_json())
    assert again == d
    assert again.explain("did:key:b") == d.explain("did:key:b")


# --- properties ------------------------------------------------------------------------------------

unit = st.floats(0, 1, allow_nan=False)
executors = st.builds(
    ExecutorInfo,
    did=st.sampled_from([f"did:key:{c}" for c in "abcdefgh"]),
    region=st.sampled_from([None, "eu", "us"]),
    trust=unit,
    capacity=st.builds(Capacity, cpu_free=unit, memory_free=unit,
                       cpu_cores=st.sampled_from([0.5, 1.0, 4.0]), memory_mb=st.sampled_from([32, 1024])),
    queue_depth=st.integers(0, 20),
    blobs=st.lists(st.sampled_from(["b1", "b2", "b3"]), max_size=3),
)
offers_st = st.lists(
    st.builds(Offer, task_id=st.just("t1"), executor=executors,
              rtt_ms=st.none() | st.floats(0, 2000, allow_nan=False), offered_at_ms=st.integers(0, 5)),
    max_size=12,
)
tasks_st = st.builds(
    lambda blobs, region, pref, avoid: task(input_blobs=blobs, hints={
        "preferred_region": region, "preferred_executors": pref, "avoid_executors": avoid}),
    st.lists(st.sampled_from(["b1", "b2", "b3"]), max_size=3),
    st.sampled_from([None, "eu", "us"]),
    st.lists(st.sampled_from(["did:key:a", "did:key:b"]), max_size=2),
    st.lists(st.sampled_from(["did:key:c", "did:key:d"]), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(t=tasks_st, offers=offers_st, min_trust=unit,
       region=st.sampled_from([None, "eu"]))
def test_winner_has_max_score_and_scores_are_in_unit_range(t, offers, min_trust, region):
    d = run(t, offers, PlacementConstraints(required_region=region), min_trust=min_trust)
    feasible = [r for r in d.results if r.feasible]
    for r in feasible:
        assert 0.0 <= r.score <= 1.0
        assert r.score == pytest.approx(sum(c.value for c in r.breakdown.values()), abs=1e-9)
    assert len({r.did for r in feasible}) == len(feasible)
    if not feasible:
        assert d.winner is None and d.waiting_for
        return
    best = max(r.score for r in feasible)
    w = d.result(d.winner)
    assert w.feasible and w.score == best
    assert d.winner == min(r.did for r in feasible if r.score == best)
    for r in feasible:
        if r.did != d.winner:
            assert "lost" in d.explain(r.did)
    for r in d.results:
        if not r.feasible:
            assert "infeasible" in d.explain(r.did) or r.excluded_by.filter == "duplicate"
