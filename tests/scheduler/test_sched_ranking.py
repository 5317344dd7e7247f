import pytest

from icn_p2p.scheduler.feasibility import PlacementContext
from icn_p2p.scheduler.placement import score
from icn_p2p.scheduler.ranking import (
    DEFAULT_RANKERS,
    CapacityRanker,
    DataLocalityRanker,
    HintsRanker,
    QueueRanker,
    RttRanker,
    TrustRanker,
)
from icn_p2p.scheduler.trust import TrustBook

from .factories import offer, task


def ctx():
    return PlacementContext(trust=TrustBook(), min_trust=0.0, now_ms=0)


def test_default_weights_are_icns_and_sum_to_one():
    assert {r.name: r.weight for r in DEFAULT_RANKERS} == {
        "trust": 0.25, "capacity": 0.20, "queue": 0.15, "rtt": 0.15, "data_locality": 0.15, "hints": 0.10,
    }
    assert sum(r.weight for r in DEFAULT_RANKERS) == pytest.approx(1.0)


@pytest.mark.parametrize("trust,expected", [(0.0, 0.0), (0.4, 0.1), (1.0, 0.25)])
def test_trust_ranker(trust, expected):
    v, raw = TrustRanker()(task(), offer("a", trust=trust), ctx())
    assert v == pytest.approx(expected)
    assert raw["trust"] == pytest.approx(trust)


@pytest.mark.parametrize("cpu,mem,expected", [(1.0, 1.0, 0.2), (0.3, 0.9, 0.06), (0.8, 0.5, 0.1), (0, 1, 0)])
def test_capacity_ranker(cpu, mem, expected):
    v, raw = CapacityRanker()(task(), offer("a", capacity={"cpu_free": cpu, "memory_free": mem}), ctx())
    assert v == pytest.approx(expected)
    assert raw == {"cpu_free": cpu, "memory_free": mem}


@pytest.mark.parametrize("q,expected", [(0, 0.15), (5, 0.075), (10, 0.0), (50, 0.0), (3, 0.105)])
def test_queue_ranker(q, expected):
    v, _ = QueueRanker()(task(), offer("a", queue_depth=q), ctx())
    assert v == pytest.approx(expected)


@pytest.mark.parametrize("rtt,expected", [(None, 0.0), (0.0, 0.15), (250.0, 0.075), (500.0, 0.0), (9000.0, 0.0),
                                          (50.0, 0.135)])
def test_rtt_ranker(rtt, expected):
    v, raw = RttRanker()(task(), offer("a", rtt_ms=rtt), ctx())
    assert v == pytest.approx(expected)
    assert raw == {"rtt_ms": rtt}


def test_data_locality_ranker():
    r = DataLocalityRanker()
    t = task(input_blobs=["b1", "b2", "b3", "b4"])
    assert r(t, offer("a", blobs=["b1", "b3", "x"]), ctx())[0] == pytest.approx(0.075)
    assert r(t, offer("a", blobs=[]), ctx())[0] == 0.0
    assert r(t, offer("a", blobs=["b4", "b3", "b2", "b1"]), ctx())[0] == pytest.approx(0.15)
    # duplicated inputs count once
    assert r(task(input_blobs=["b1", "b1"]), offer("a", blobs=["b1"]), ctx())[0] == pytest.approx(0.15)


def test_data_locality_without_inputs_gives_everyone_full_weight():
    v, raw = DataLocalityRanker()(task(), offer("a"), ctx())
    assert v == pytest.approx(0.15)
    assert raw == {"blobs_held": 0, "blobs_wanted": 0}


@pytest.mark.parametrize("region,pref_region,pref_execs,expected", [
    ("eu", None, [], 0.0),
    ("eu", "eu", [], 0.05),
    ("us", "eu", [], 0.0),
    ("us", "eu", ["a"], 0.10),
    ("eu", "eu", ["a"], 0.10),  # capped
    (None, "eu", ["b"], 0.0),
])
def test_hints_ranker(region, pref_region, pref_execs, expected):
    t = task(hints={"preferred_region": pref_region, "preferred_executors": pref_execs})
    v, _ = HintsRanker()(t, offer("a", region=region), ctx())
    assert v == pytest.approx(expected)


def test_hints_ranker_custom_weight_scales():
    t = task(hints={"preferred_region": "eu"})
    assert HintsRanker(weight=0.2)(t, offer("a", region="eu"), ctx())[0] == pytest.approx(0.10)


def test_score_matches_formula_by_hand():
    t = task(input_blobs=["b1", "b2"], hints={"preferred_region": "eu"})
    o = offer("a", trust=0.8, region="eu", queue_depth=2, rtt_ms=100.0, blobs=["b2"],
              capacity={"cpu_free": 0.5, "memory_free": 0.7})
    s, b = score(t, o, ctx())
    # 0.25*0.8 + 0.20*0.5 + 0.15*0.8 + 0.15*0.8 + 0.15*0.5 + 0.05
    assert s == pytest.approx(0.20 + 0.10 + 0.12 + 0.12 + 0.075 + 0.05)
    assert {k: round(c.value, 9) for k, c in b.items()} == {
        "trust": 0.2, "capacity": 0.1, "queue": 0.12, "rtt": 0.12, "data_locality": 0.075, "hints": 0.05,
    }
    assert b["queue"].inputs == {"queue_depth": 2} and b["queue"].weight == 0.15


def test_perfect_and_worst_scores():
    t = task(hints={"preferred_executors": ["a"]})
    best = offer("a", trust=1.0, rtt_ms=0.0)
    assert score(t, best, ctx())[0] == 1.0
    worst = offer("z", trust=0.0, queue_depth=99, capacity={"cpu_free": 0, "memory_free": 0})
    assert score(task(input_blobs=["x"]), worst, ctx())[0] == 0.0
