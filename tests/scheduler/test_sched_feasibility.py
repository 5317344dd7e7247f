import pytest

from icn_p2p.core.decision import CapabilityRequirement, PlacementConstraints
from icn_p2p.scheduler.feasibility import (
    DEFAULT_FILTERS,
    AvoidFilter,
    ConstraintFilter,
    DeadlineFilter,
    FitsFilter,
    MinTrustFilter,
    PlacementContext,
    TaskMatchFilter,
)
from icn_p2p.scheduler.trust import TrustBook

from .factories import offer, task

NONE = PlacementConstraints()


def ctx(min_trust=0.0, now_ms=0, book=None):
    return PlacementContext(trust=book or TrustBook(), min_trust=min_trust, now_ms=now_ms)


def test_filters_have_distinct_names():
    names = [f.name for f in DEFAULT_FILTERS]
    assert len(set(names)) == len(names)


def test_task_match():
    f = TaskMatchFilter()
    assert f(task("t1"), NONE, offer("a", task_id="t1"), ctx()) is None
    assert "t2" in f(task("t1"), NONE, offer("a", task_id="t2"), ctx())


def test_constraint_filter_uses_policy_reasons():
    f = ConstraintFilter()
    c = PlacementConstraints(required_region="eu-central",
                             required_capabilities=[CapabilityRequirement(capability="encryption", min_version="1.0")])
    ok = offer("a", region="eu-central", capabilities={"encryption": "1.2"})
    assert f(task(), c, ok, ctx()) is None
    bad = offer("b", region="us-west", capabilities={"encryption": "0.9"})
    reason = f(task(), c, bad, ctx())
    assert "region us-west is not the required eu-central" in reason
    assert "encryption" in reason  # every reason kept, not only the first


def test_avoid_filter():
    f = AvoidFilter()
    t = task(hints={"avoid_executors": ["did:key:bad"]})
    assert f(t, NONE, offer("did:key:bad"), ctx()) == "the task's locality hints avoid this executor"
    assert f(t, NONE, offer("did:key:good"), ctx()) is None


def test_min_trust_filter_uses_effective_trust():
    f = MinTrustFilter()
    book = TrustBook()
    o = offer("a", trust=0.6)
    assert f(task(), NONE, o, ctx(0.5, book=book)) is None
    for i in range(10):
        book.record_failure("a", i)
    reason = f(task(), NONE, o, ctx(0.5, book=book))
    assert reason == "trust 0.300 is below the minimum 0.500"
    assert f(task(), NONE, offer("b", trust=0.5), ctx(0.5)) is None  # at the minimum passes


@pytest.mark.parametrize("cores,cpu_free,mem,mem_free,need_cores,need_mb,fits", [
    (1, 1.0, 1024, 1.0, 1.0, 64, True),       # exactly one core
    (0.8, 1.0, 1024, 1.0, 1.0, 64, False),    # a smaller machine than the task needs
    (8, 0.0, 1000, 0.0, 2.0, 100, True),      # busy right now: ranked lower, still feasible
    (8, 0.5, 99, 1.0, 2.0, 100, False),       # 99 MB machine, 100 MB task
    (0.3, 1.0, 4096, 1.0, 0.1 * 3, 64, True),  # float noise does not exclude
])
def test_fits_filter(cores, cpu_free, mem, mem_free, need_cores, need_mb, fits):
    f = FitsFilter()
    t = task(profile={"cpu_cores": need_cores, "memory_mb": need_mb})
    o = offer("a", capacity={"cpu_cores": cores, "cpu_free": cpu_free, "memory_mb": mem, "memory_free": mem_free})
    assert (f(t, NONE, o, ctx()) is None) is fits


def test_fits_filter_names_both_shortfalls():
    t = task(profile={"cpu_cores": 4, "memory_mb": 2048})
    o = offer("a", capacity={"cpu_cores": 2, "cpu_free": 0.5, "memory_mb": 1024, "memory_free": 0.5})
    assert FitsFilter()(t, NONE, o, ctx()) == "2.00 CPU cores < 4 needed; 1024 MB memory < 2048 MB needed"


def test_deadline_filter():
    f = DeadlineFilter()
    assert f(task(), NONE, offer("a"), ctx(now_ms=10**12)) is None  # no deadline
    t = task(deadline_ms=1_000)
    assert f(t, NONE, offer("a", rtt_ms=100.0), ctx(now_ms=800)) is None
    assert "deadline" in f(t, NONE, offer("a", rtt_ms=300.0), ctx(now_ms=800))
    assert "deadline" in f(t, NONE, offer("a"), ctx(now_ms=1_000))
    assert f(t, NONE, offer("a"), ctx(now_ms=999)) is None


def test_context_caches_trust_per_executor():
    book = TrustBook()
    c = ctx(book=book)
    o = offer("a", trust=0.7)
    assert c.effective_trust(o) == pytest.approx(0.7)
    book.record_failure("a", 0)
    assert c.effective_trust(o) == pytest.approx(0.7)  # one placement sees one consistent trust
