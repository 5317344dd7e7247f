"""The tracker: idempotent recordings, merged reads, month reset, metrics."""

import pytest

from icn_p2p import metrics
from icn_p2p.core.clock import month_start_ms
from icn_p2p.metrics import REGISTRY
from icn_p2p.usage import UsageTracker

from .helpers import KEYS, MONTH, NOW


@pytest.fixture
def tracker(make_store):
    return UsageTracker(make_store("a.db", KEYS[0]))


def test_a_receipt_counts_once_even_after_restart(tracker, make_store):
    assert tracker.record_execution("c", "m", "t1", cpu_ms=1_800_000, fuel=500, credits_spent=7)
    assert not tracker.record_execution("c", "m", "t1", cpu_ms=1_800_000, fuel=500, credits_spent=7)
    tracker.store.close()
    again = UsageTracker(make_store("a.db", KEYS[0]))
    assert not again.record_execution("c", "m", "t1", cpu_ms=1_800_000, fuel=500, credits_spent=7)
    assert again.record_execution("c", "m", "t2", cpu_ms=1_800_000, fuel=500)
    u = again.get_usage("c", "m")
    assert (u.cpu_hours_this_month, u.fuel_this_month, u.tasks_completed_this_month,
            u.credits_spent_this_month, u.month) == (1.0, 1000, 2, 7, MONTH)


def test_only_the_executor_records_its_receipt(tracker):
    assert not tracker.record_execution("c", "m", "t1", 10, 10, executor_did=KEYS[1].did)
    assert tracker.record_execution("c", "m", "t1", 10, 10, executor_did=KEYS[0].did)
    assert tracker.get_usage("c", "m").tasks_completed_this_month == 1


@pytest.mark.parametrize("bad", [{"cpu_ms": -1}, {"fuel": 1.5}, {"credits_spent": "3"}, {"cpu_ms": True}])
def test_bad_numbers_are_refused_and_record_nothing(tracker, bad):
    args = {"cpu_ms": 1, "fuel": 1, "credits_spent": 0} | bad
    with pytest.raises(ValueError):
        tracker.record_execution("c", "m", "t1", **args)
    assert tracker.record_execution("c", "m", "t1", 1, 1)  # the id was not burnt


def test_claims_and_releases_are_once_per_task(tracker):
    t = tracker
    assert t.task_claimed("c", "m", "t1") and t.task_claimed("c", "m", "t2")
    assert not t.task_claimed("c", "m", "t1")
    assert t.get_usage("c", "m").concurrent_tasks == 2
    assert t.task_released("c", "m", "t1") and not t.task_released("c", "m", "t1")
    assert not t.task_released("c", "m", "never-claimed-here")
    assert t.get_usage("c", "m").concurrent_tasks == 1


def test_a_task_running_across_the_month_boundary(tracker, clock):
    t = tracker
    t.task_claimed("c", "m", "long")
    t.record_execution("c", "m", "x", 3_600_000, 1)
    clock.set(month_start_ms("2025-04") + 1000)
    u = t.get_usage("c", "m")
    assert u.month == "2025-04" and u.cpu_hours_this_month == 0  # the monthly reset
    assert u.concurrent_tasks == 1  # still running
    t.task_released("c", "m", "long")
    assert t.get_usage("c", "m").concurrent_tasks == 0
    assert t.task_claimed("c", "m", "new")
    assert t.get_usage("c", "m").concurrent_tasks == 1


def test_credits_earned_once_per_reference(tracker):
    assert tracker.credit_earned("c", "m", 30, "ref-1")
    assert not tracker.credit_earned("c", "m", 30, "ref-1")
    assert tracker.credit_earned("c", "m", 5, "ref-2")
    assert tracker.store.state.totals("c", "m", MONTH).credits_earned == 35
    with pytest.raises(ValueError):
        tracker.credit_earned("c", "m", -5, "ref-3")


def test_usage_is_merged_across_nodes(make_store):
    a = UsageTracker(make_store("a.db", KEYS[0]))
    b = UsageTracker(make_store("b.db", KEYS[1]))
    a.record_execution("c", "m", "t1", 3_600_000, 10, credits_spent=3)
    b.record_execution("c", "m", "t2", 7_200_000, 20, credits_spent=4)
    b.record_execution("c", "other", "t3", 1, 1)
    b.task_claimed("c", "m", "t4")
    a.store.merge_delta(b.store.delta("c", a.store.version_vector("c")))
    u = a.get_usage("c", "m", NOW)
    assert (u.cpu_hours_this_month, u.credits_spent_this_month, u.tasks_completed_this_month,
            u.concurrent_tasks, u.fuel_this_month) == (3.0, 7, 2, 1, 30)
    listed = {x.member: x for x in a.list_coop_usage("c")}
    assert set(listed) == {"m", "other"} and listed["m"] == u
    assert a.list_coop_usage("unknown") == []


def test_metrics_follow_the_recordings(tracker):
    labels = {"coop": "metric-coop", "member": "mm"}
    done0 = REGISTRY.get_sample_value("icn_member_tasks_completed_total", labels) or 0
    spent0 = REGISTRY.get_sample_value("icn_member_credits_spent_total", labels) or 0
    tracker.record_execution("metric-coop", "mm", "t", 5_400_000, 1, credits_spent=4)
    assert REGISTRY.get_sample_value("icn_member_tasks_completed_total", labels) == done0 + 1
    assert REGISTRY.get_sample_value("icn_member_credits_spent_total", labels) == spent0 + 4
    assert REGISTRY.get_sample_value("icn_member_cpu_hours", labels) == 1.5
    metrics.set_member_labels(False)
    try:
        tracker.record_execution("metric-coop", "mm", "t2", 1, 1)
        tracker.get_usage("metric-coop", "mm")
        assert REGISTRY.get_sample_value("icn_member_cpu_hours", {"coop": "metric-coop", "member": "*"}) > 1.5
    finally:
        metrics.set_member_labels(True)


def test_completion_counted_once_by_the_submitter_resources_by_each_run(tmp_path):
    from icn_p2p.identity.keys import NodeKey
    from icn_p2p.usage.store import UsageStore
    from icn_p2p.usage.tracker import UsageTracker

    store = UsageStore(tmp_path / "u.db", NodeKey.generate())
    tracker = UsageTracker(store)
    # Two runs of one task (the first executor vanished before answering): both cost CPU.
    assert tracker.record_execution("c", "m", "t1", 100, 10, count_task=False)
    assert tracker.task_completed("c", "m", "t1")
    assert not tracker.task_completed("c", "m", "t1")
    usage = tracker.get_usage("c", "m")
    assert usage.tasks_completed_this_month == 1 and usage.fuel_this_month == 10
    store.close()
