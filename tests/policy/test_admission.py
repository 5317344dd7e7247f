"""The admission engine: every quota, every rule, each enforcement mode, priority arithmetic."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from icn_p2p.core.clock import ms_from_datetime
from icn_p2p.core.decision import PolicyDecision
from icn_p2p.core.enums import EnforcementMode, TaskPriority
from icn_p2p.core.policy import CoopSchedulingPolicy
from icn_p2p.core.task import ComputeTask
from icn_p2p.core.usage import MemberUsage
from icn_p2p.policy import admission
from icn_p2p.policy.admission import (
    adjust_priority,
    day_names,
    evaluate,
    explain,
    hour_ranges,
    placement_constraints,
    policy_hash,
)

COOP = "housing:greenfield"
MEMBER = "did:icn:resident-12"
QUOTA = {"cpu_hours_per_month": 5.0, "max_concurrent_tasks": 2, "max_priority": "Normal",
         "credits_per_month": 50}
# Sunday 2026-11-22 14:00 UTC
SUNDAY_2PM = ms_from_datetime(datetime(2026, 11, 22, 14, tzinfo=timezone.utc))


def at(*args) -> int:
    return ms_from_datetime(datetime(*args, tzinfo=timezone.utc))


def policy(rules=(), mode="Strict", quotas=None, default=None) -> CoopSchedulingPolicy:
    return CoopSchedulingPolicy.from_dict({
        "coop_id": COOP, "rules": list(rules), "member_quotas": quotas or {},
        "default_quota": default or QUOTA, "enforcement_mode": mode,
    })


def task(priority="Normal", tags=(), submitter=MEMBER) -> ComputeTask:
    return ComputeTask(id="t-1", coop_id=COOP, submitter=submitter, priority=priority, tags=list(tags))


def usage(cpu=0.0, concurrent=0, credits=0) -> MemberUsage:
    return MemberUsage(cpu_hours_this_month=cpu, concurrent_tasks=concurrent, credits_spent_this_month=credits)


def decide(p, t=None, u=None, now=SUNDAY_2PM, member=MEMBER) -> PolicyDecision:
    return evaluate(p, t or task(), member, u or usage(), now)


def rules_of(d: PolicyDecision) -> list[str]:
    return [v.rule for v in d.violations]


# --- quotas -------------------------------------------------------------------------------


def test_within_every_quota_is_allowed_with_the_decision_filled_in():
    p = policy()
    d = decide(p, u=usage(cpu=4.9, concurrent=1, credits=49))
    assert d.decision == "allow" and d.allowed and d.violations == []
    assert d.adjusted_priority is TaskPriority.NORMAL and d.submitted_priority is TaskPriority.NORMAL
    assert d.coop_id == COOP and d.member == MEMBER and d.evaluated_at_ms == SUNDAY_2PM
    assert d.policy_hash == p.content_hash()
    assert d.enforcement_mode is EnforcementMode.STRICT
    assert d.summary() == "allowed"
    # the quick construction gives a normal, serialisable model
    assert PolicyDecision.model_validate_json(d.model_dump_json()) == d


def test_cpu_hours_at_the_quota_is_rejected_with_numbers_and_the_monthly_reset():
    d = decide(policy(), u=usage(cpu=5.0))
    assert d.decision == "reject" and rules_of(d) == ["quota.cpu_hours"]
    v = d.violations[0]
    assert v.member == MEMBER and v.observed == 5.0 and v.limit == 5.0
    assert "5.0/5.0" in v.reason and "2026-11" in v.reason
    assert "wait until 2026-12-01T00:00Z (monthly reset)" in v.remedy


def test_cpu_reset_across_the_year_end():
    d = decide(policy(), u=usage(cpu=7.25), now=at(2026, 12, 31, 23, 59))
    assert "7.25/5.0" in d.violations[0].reason
    assert "2027-01-01T00:00Z" in d.violations[0].remedy


def test_concurrent_tasks_at_the_limit_is_rejected():
    d = decide(policy(), u=usage(concurrent=2))
    assert rules_of(d) == ["quota.concurrent_tasks"]
    assert "2/2" in d.violations[0].reason
    assert "wait for 1 of your running task to finish" == d.violations[0].remedy
    d = decide(policy(), u=usage(concurrent=4))
    assert "wait for 3 of your running tasks" in d.violations[0].remedy


def test_priority_above_the_members_maximum_is_rejected_equal_is_fine():
    assert decide(policy(), t=task("Normal")).allowed
    d = decide(policy(), t=task("High"))
    assert rules_of(d) == ["quota.max_priority"]
    v = d.violations[0]
    assert (v.observed, v.limit) == ("High", "Normal")
    assert "High" in v.reason and "Normal" in v.reason
    assert v.remedy == "submit at priority Normal or lower"


def test_credits_spent_at_the_limit_is_rejected_and_null_means_unlimited():
    d = decide(policy(), u=usage(credits=50))
    assert rules_of(d) == ["quota.credits"] and "50/50" in d.violations[0].reason
    assert "2026-12-01T00:00Z" in d.violations[0].remedy
    unlimited = policy(default={**QUOTA, "credits_per_month": None})
    assert decide(unlimited, u=usage(credits=10**12)).allowed


def test_zero_quota_blocks_everything():
    zero = policy(default={**QUOTA, "cpu_hours_per_month": 0.0, "max_concurrent_tasks": 0,
                           "credits_per_month": 0})
    assert rules_of(decide(zero)) == ["quota.cpu_hours", "quota.concurrent_tasks", "quota.credits"]


def test_every_quota_violation_is_listed_in_icn_order():
    d = decide(policy(), t=task("Critical"), u=usage(cpu=9, concurrent=3, credits=99))
    assert rules_of(d) == ["quota.cpu_hours", "quota.concurrent_tasks", "quota.max_priority",
                           "quota.credits"]
    assert d.summary().count(";") == 3


def test_member_override_replaces_the_default_entirely():
    quotas = {"did:icn:guest": {"cpu_hours_per_month": 10.0, "max_concurrent_tasks": 1,
                                "max_priority": "Low", "credits_per_month": None},
              "did:icn:ops": {"cpu_hours_per_month": 500.0, "max_concurrent_tasks": 50,
                              "max_priority": "Critical", "credits_per_month": 5000}}
    p = policy(quotas=quotas)
    # guest: more cpu than the default allows, but only Low and one task; no credit limit at all
    assert decide(p, t=task("Low", submitter="did:icn:guest"), u=usage(cpu=7, credits=10**6),
                  member="did:icn:guest").allowed
    assert rules_of(decide(p, t=task("Normal"), u=usage(concurrent=1), member="did:icn:guest")) == [
        "quota.concurrent_tasks", "quota.max_priority"]
    assert decide(p, t=task("Critical"), u=usage(cpu=400, concurrent=40, credits=4000),
                  member="did:icn:ops").allowed
    # everyone else keeps the default
    assert rules_of(decide(p, u=usage(cpu=7))) == ["quota.cpu_hours"]


def test_quota_is_looked_up_by_the_submitter_argument():
    quotas = {"did:icn:ops": {"cpu_hours_per_month": 500.0, "max_concurrent_tasks": 50,
                              "max_priority": "Critical"}}
    p = policy(quotas=quotas)
    assert decide(p, t=task("Critical", submitter="did:icn:ops"), member="did:icn:ops").allowed
    assert not decide(p, t=task("Critical", submitter="did:icn:ops"), member=MEMBER).allowed


def test_a_task_of_another_coop_is_a_caller_error():
    other = ComputeTask(id="x", coop_id="other", submitter=MEMBER)
    with pytest.raises(ValueError, match="other"):
        evaluate(policy(), other, MEMBER, usage(), SUNDAY_2PM)


# --- time windows -----------------------------------------------------------------------------

NIGHT = {"TimeWindow": {"allowed_hours": [0, 1, 2, 3, 4, 5, 22, 23],
                        "allowed_days": [0, 1, 2, 3, 4, 5, 6], "priorities": ["Low"]}}
WEEKEND = {"TimeWindow": {"allowed_hours": list(range(24)), "allowed_days": [0, 6],
                          "priorities": ["Normal"]}}


def test_time_window_rejects_a_listed_priority_outside_the_hours():
    d = decide(policy([NIGHT]), t=task("Low"))
    assert rules_of(d) == ["TimeWindow"]
    v = d.violations[0]
    assert "14:00 UTC" in v.reason and "22:00-05:59" in v.reason and "Low" in v.reason
    assert v.remedy == "submit between 22:00 and 05:59 UTC (next: 2026-11-22T22:00Z)"
    assert v.observed == {"hour": 14, "day": 0}
    assert v.limit["allowed_hours"] == [0, 1, 2, 3, 4, 5, 22, 23]


@pytest.mark.parametrize("hour, ok", [(21, False), (22, True), (23, True), (0, True), (5, True), (6, False)])
def test_time_window_hour_edges(hour, ok):
    assert decide(policy([NIGHT]), t=task("Low"), now=at(2026, 11, 22, hour, 30)).allowed is ok


def test_time_window_ignores_priorities_it_does_not_list():
    assert decide(policy([NIGHT]), t=task("Normal")).allowed


@pytest.mark.parametrize(
    "when, ok",
    [
        (at(2026, 11, 21, 23, 59), True),   # Saturday night
        (at(2026, 11, 22, 23, 59), True),   # Sunday, last minute
        (at(2026, 11, 23, 0, 0), False),    # Monday, first minute
        (at(2026, 11, 27, 23, 59), False),  # Friday, last minute
        (at(2026, 11, 28, 0, 0), True),     # Saturday, first minute
    ],
)
def test_time_window_weekday_edges_in_utc(when, ok):
    d = decide(policy([WEEKEND]), now=when)
    assert d.allowed is ok
    if not ok:
        v = d.violations[0]
        assert "on Monday" in v.reason or "on Friday" in v.reason
        assert "on Sunday, Saturday" in v.remedy and "2026-11-28T00:00Z" in v.remedy


def test_time_window_judges_the_submitted_priority_not_the_adjusted_one():
    boost = {"MemberPriority": {"member": MEMBER, "multiplier": 3.0}}
    d = decide(policy([boost, {"TimeWindow": {"allowed_hours": [3], "allowed_days": [0],
                                              "priorities": ["Normal"]}}]), t=task("Normal"))
    assert d.adjusted_priority is TaskPriority.CRITICAL
    assert rules_of(d) == ["TimeWindow"]
    d = decide(policy([boost, {"TimeWindow": {"allowed_hours": [3], "allowed_days": [0],
                                              "priorities": ["Critical"]}}]), t=task("Normal"))
    assert d.allowed


def test_hour_and_day_both_wrong_in_one_violation_and_several_windows_each_listed():
    w1 = {"TimeWindow": {"allowed_hours": [1], "allowed_days": [3], "priorities": ["Low"]}}
    w2 = {"TimeWindow": {"allowed_hours": [2, 3, 9, 10], "allowed_days": [0], "priorities": ["Low"]}}
    d = decide(policy([w1, w2]), t=task("Low"))
    assert rules_of(d) == ["TimeWindow", "TimeWindow"]
    assert " or on Sunday" in d.violations[0].reason
    assert "in 02:00-03:59, 09:00-10:59 UTC" in d.violations[1].remedy
    assert "2026-11-29T02:00Z" in d.violations[1].remedy  # next Sunday


def test_a_window_that_never_opens_says_so():
    closed = {"TimeWindow": {"allowed_hours": [], "allowed_days": [1], "priorities": ["Low"]}}
    d = decide(policy([closed]), t=task("Low"))
    assert "never opens" in d.violations[0].remedy
    assert "Normal, High, Critical" in d.violations[0].remedy


def test_hour_ranges_and_day_names():
    assert hour_ranges([0, 1, 2, 3, 4, 5, 22, 23]) == "22:00-05:59"
    assert hour_ranges(range(24)) == "any hour"
    assert hour_ranges([]) == "no hour"
    assert hour_ranges([9, 10, 11, 14]) == "09:00-11:59, 14:00-14:59"
    assert day_names([6, 0]) == "Sunday, Saturday"
    assert day_names(range(7)) == "any day" and day_names([]) == "no day"


# --- member priority -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "priority, multiplier, expected",
    [
        ("Normal", 2.0, "High"),        # 1 x 2 = 2
        ("High", 1.5, "Critical"),      # 2 x 1.5 = 3
        ("Low", 0.5, "Low"),            # 0 x 0.5 = 0
        ("Low", 100.0, "Low"),          # 0 stays 0
        ("Critical", 10.0, "Critical"),  # clamp at the top
        ("Normal", 0.1, "Low"),         # 0.1 rounds to 0
        ("Normal", 0.5, "Normal"),      # 0.5 rounds away from zero to 1
        ("Normal", 2.5, "Critical"),    # 2.5 rounds to 3
        ("High", 0.75, "High"),         # 2 x 0.75 = 1.5 -> 2
        ("Normal", 1.49, "Normal"),     # 1.49 -> 1
        ("Critical", 0.5, "High"),      # 3 x 0.5 = 1.5 -> 2
        ("Critical", 0.1, "Low"),       # 0.3 -> 0: clamp at the bottom
    ],
)
def test_priority_arithmetic(priority, multiplier, expected):
    # an independent oracle: decimal rounding of halves away from zero, then clamping
    assert TaskPriority.from_rank(round_half_away(TaskPriority(priority).rank * multiplier)).value == expected
    assert adjust_priority(TaskPriority(priority), multiplier).value == expected
    d = decide(policy([{"MemberPriority": {"member": MEMBER, "multiplier": multiplier}}],
                      default={**QUOTA, "max_priority": "Critical"}), t=task(priority))
    assert d.adjusted_priority.value == expected and d.submitted_priority.value == priority


def round_half_away(x: float) -> int:
    from decimal import ROUND_HALF_UP, Decimal

    return int(Decimal(repr(x)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def test_first_member_priority_rule_wins_and_others_are_not_touched():
    p = policy([{"MemberPriority": {"member": MEMBER, "multiplier": 2.0}},
                {"MemberPriority": {"member": MEMBER, "multiplier": 0.1}},
                {"MemberPriority": {"member": "did:icn:other", "multiplier": 3.0}}])
    assert decide(p).adjusted_priority is TaskPriority.HIGH
    assert decide(p, t=task(submitter="did:icn:x"), member="did:icn:x").adjusted_priority is TaskPriority.NORMAL
    assert adjust_priority(TaskPriority.HIGH, None) is TaskPriority.HIGH


def test_max_priority_judges_the_submitted_priority():
    p = policy([{"MemberPriority": {"member": MEMBER, "multiplier": 3.0}}])  # max Normal
    d = decide(p, t=task("Normal"))
    assert d.allowed and d.adjusted_priority is TaskPriority.CRITICAL


# --- placement constraints ---------------------------------------------------------------------


def test_untagged_sovereignty_applies_to_every_task_tagged_only_to_its_tags():
    p = policy([{"DataSovereignty": {"region": "eu-central", "tags": []}},
                {"DataSovereignty": {"region": "eu-central", "tags": ["patient-data"]}}])
    assert decide(p).constraints.required_region == "eu-central"
    q = policy([{"DataSovereignty": {"region": "eu-central", "tags": ["patient-data", "trial"]}}])
    assert decide(q).constraints.required_region is None
    assert decide(q, t=task(tags=["batch"])).constraints.required_region is None
    assert decide(q, t=task(tags=["batch", "trial"])).constraints.required_region == "eu-central"
    assert placement_constraints(q, ["patient-data"]).required_region == "eu-central"
    assert placement_constraints(q).required_region is None


def test_two_required_regions_conflict_and_strict_rejects():
    p = policy([{"DataSovereignty": {"region": "eu-central", "tags": ["patient-data"]}},
                {"DataSovereignty": {"region": "us-west", "tags": ["us-only"]}}])
    assert decide(p, t=task(tags=["patient-data"])).allowed
    d = decide(p, t=task(tags=["patient-data", "us-only"]))
    assert d.decision == "reject" and rules_of(d) == ["DataSovereignty"]
    assert d.constraints.conflicts and not d.constraints.satisfiable
    assert d.constraints.required_region is None
    assert "No executor can be feasible" in d.violations[0].reason
    assert "eu-central" in d.violations[0].reason and "us-west" in d.violations[0].reason
    # cached per tag set, still right the second time and for the other order
    assert decide(p, t=task(tags=["us-only", "patient-data"])).violations == d.violations
    permissive = policy(p.to_icn_dict()["rules"], mode="Permissive")
    d2 = decide(permissive, t=task(tags=["patient-data", "us-only"]))
    assert d2.allowed and rules_of(d2) == ["DataSovereignty"] and d2.constraints.conflicts


def test_untagged_region_conflict_hits_every_task():
    p = policy([{"DataSovereignty": {"region": "eu-central", "tags": []}},
                {"DataSovereignty": {"region": "us-west", "tags": []}}])
    d = decide(p)
    assert d.decision == "reject" and "every task" in d.violations[0].reason


def test_whitelists_intersect_blacklists_union_capabilities_take_the_highest_minimum():
    p = policy([
        {"ExecutorFilter": {"whitelist": ["did:a", "did:b", "did:c"], "blacklist": ["did:x"]}},
        {"ExecutorFilter": {"whitelist": ["did:c", "did:b", "did:d"], "blacklist": ["did:y", "did:x"]}},
        {"ExecutorFilter": {"whitelist": [], "blacklist": ["did:z"]}},
        {"RequireCapability": {"capability": "encryption", "min_version": "1.9"}},
        {"RequireCapability": {"capability": "gpu", "min_version": None}},
        {"RequireCapability": {"capability": "encryption", "min_version": "1.10"}},
        {"RequireCapability": {"capability": "encryption", "min_version": None}},
        {"RequireCapability": {"capability": "gpu", "min_version": "2"}},
    ])
    c = decide(p).constraints
    assert c.allowed_executors == ["did:b", "did:c"]
    assert c.forbidden_executors == ["did:x", "did:y", "did:z"]
    assert [(r.capability, r.min_version) for r in c.required_capabilities] == [
        ("encryption", "1.10"), ("gpu", "2")]
    assert c.satisfiable and decide(p).allowed


def test_disjoint_whitelists_or_a_fully_blacklisted_whitelist_conflict():
    p = policy([{"ExecutorFilter": {"whitelist": ["did:a"], "blacklist": []}},
                {"ExecutorFilter": {"whitelist": ["did:b"], "blacklist": []}}])
    d = decide(p)
    assert rules_of(d) == ["ExecutorFilter"] and "in common" in d.constraints.conflicts[0]
    q = policy([{"ExecutorFilter": {"whitelist": ["did:a"], "blacklist": ["did:a"]}}])
    assert "also blacklisted" in decide(q).constraints.conflicts[0]


def test_constraints_are_the_same_object_for_untagged_tasks():
    p = policy([{"RequireCapability": {"capability": "gpu"}}])
    assert decide(p).constraints is decide(p, t=task("Low")).constraints


# --- enforcement modes ------------------------------------------------------------------------


@pytest.mark.parametrize("mode, verdict", [("Strict", "reject"), ("Permissive", "allow"),
                                           ("Monitoring", "allow")])
def test_enforcement_modes_keep_the_same_violations(mode, verdict):
    p = policy([NIGHT], mode=mode)
    d = decide(p, t=task("Low"), u=usage(cpu=6, concurrent=2, credits=50))
    assert d.decision == verdict and d.enforcement_mode.value == mode
    assert rules_of(d) == ["quota.cpu_hours", "quota.concurrent_tasks", "quota.credits", "TimeWindow"]


def test_permissive_without_violations_is_a_plain_allow():
    assert decide(policy(mode="Permissive")).violations == []


# --- caching, hashing and the explanation --------------------------------------------------------


def test_policy_hash_is_cached_per_object_and_dropped_with_it():
    p = policy()
    assert policy_hash(p) == p.content_hash()
    assert id(p) in admission._INDEX
    q = CoopSchedulingPolicy.from_dict({**p.to_icn_dict(), "enforcement_mode": "Monitoring"})
    assert policy_hash(q) != policy_hash(p)
    key = id(p)
    del p
    import gc

    gc.collect()
    assert key not in admission._INDEX or admission._INDEX[key][0]() is not None


def test_a_new_policy_object_at_a_reused_id_is_not_served_a_stale_index():
    for mode in ("Strict", "Permissive", "Strict", "Monitoring"):
        p = policy(mode=mode)
        assert decide(p, u=usage(cpu=9)).enforcement_mode.value == mode
        assert decide(p).policy_hash == p.content_hash()
        del p


def test_explain_reads_well():
    p = policy([NIGHT, {"MemberPriority": {"member": MEMBER, "multiplier": 2.0}},
                {"DataSovereignty": {"region": "eu-central", "tags": []}},
                {"ExecutorFilter": {"whitelist": ["did:a"], "blacklist": ["did:x"]}},
                {"RequireCapability": {"capability": "encryption", "min_version": "1.0"}}])
    text = explain(decide(p, u=usage(cpu=5)))
    assert text.startswith("REJECTED for did:icn:resident-12 in housing:greenfield (Strict")
    assert "Normal -> High" in text and "[quota.cpu_hours]" in text
    assert "to pass: wait until 2026-12-01T00:00Z" in text
    assert "region eu-central" in text and "only on: did:a" in text.replace("runs only on", "only on")
    assert "never on: did:x" in text and "needs capability encryption >= 1.0" in text
    allowed = explain(decide(policy(mode="Permissive"), u=usage(cpu=5)))
    assert allowed.startswith("ALLOWED") and "admitted anyway" in allowed
    assert "priority: Normal" in explain(decide(policy()))
    conflict = policy([{"DataSovereignty": {"region": "a", "tags": []}},
                       {"DataSovereignty": {"region": "b", "tags": []}}])
    assert "no executor can be feasible" in explain(decide(conflict))
