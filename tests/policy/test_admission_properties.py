"""Properties of admission over generated policies, tasks, usage and times."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from icn_p2p.core.enums import TaskPriority
from icn_p2p.core.policy import CoopSchedulingPolicy
from icn_p2p.core.task import ComputeTask
from icn_p2p.core.usage import MemberUsage
from icn_p2p.policy.admission import evaluate

MEMBERS = ["did:icn:a", "did:icn:b", "did:icn:c"]
TAGS = ["patient-data", "batch", "trial"]
REGIONS = ["eu-central", "us-west"]
prios = st.sampled_from([p.value for p in TaskPriority])
quota = st.fixed_dictionaries({
    "cpu_hours_per_month": st.floats(0, 20, allow_nan=False),
    "max_concurrent_tasks": st.integers(0, 5),
    "max_priority": prios,
    "credits_per_month": st.none() | st.integers(0, 100),
})
rule = st.one_of(
    st.builds(lambda r, t: {"DataSovereignty": {"region": r, "tags": t}}, st.sampled_from(REGIONS),
              st.lists(st.sampled_from(TAGS), max_size=2)),
    st.builds(lambda h, d, p: {"TimeWindow": {"allowed_hours": h, "allowed_days": d, "priorities": p}},
              st.lists(st.integers(0, 23), max_size=24), st.lists(st.integers(0, 6), max_size=7),
              st.lists(prios, max_size=4)),
    st.builds(lambda m, x: {"MemberPriority": {"member": m, "multiplier": x}}, st.sampled_from(MEMBERS),
              st.floats(0.01, 5, allow_nan=False)),
    st.builds(lambda c, v: {"RequireCapability": {"capability": c, "min_version": v}},
              st.sampled_from(["gpu", "encryption"]), st.none() | st.sampled_from(["1.0", "1.9", "1.10"])),
    st.builds(lambda w, b: {"ExecutorFilter": {"whitelist": w, "blacklist": b}},
              st.lists(st.sampled_from(MEMBERS), max_size=2), st.lists(st.sampled_from(MEMBERS), max_size=2)),
)
policy_body = st.fixed_dictionaries({
    "coop_id": st.just("coop"),
    "rules": st.lists(rule, max_size=6),
    "member_quotas": st.dictionaries(st.sampled_from(MEMBERS), quota, max_size=2),
    "default_quota": quota,
})
case = st.tuples(
    policy_body,
    st.sampled_from(MEMBERS),
    prios,
    st.lists(st.sampled_from(TAGS), max_size=3),
    st.floats(0, 30, allow_nan=False),
    st.integers(0, 6),
    st.integers(0, 120),
    st.integers(0, 4_102_444_800_000),  # up to 2100
)


def _decide(body, mode, member, priority, tags, cpu, running, credits, now):
    p = CoopSchedulingPolicy.from_dict({**body, "enforcement_mode": mode})
    t = ComputeTask(id="t", coop_id="coop", submitter=member, priority=priority, tags=tags)
    u = MemberUsage(cpu_hours_this_month=cpu, concurrent_tasks=running, credits_spent_this_month=credits)
    return evaluate(p, t, member, u, now)


@settings(max_examples=300, deadline=None)
@given(case)
def test_strict_allows_iff_no_violation_and_the_lax_modes_list_the_same(c):
    body, member, priority, tags, cpu, running, credits, now = c
    strict = _decide(body, "Strict", member, priority, tags, cpu, running, credits, now)
    assert (strict.decision == "allow") == (not strict.violations)
    for mode in ("Permissive", "Monitoring"):
        lax = _decide(body, mode, member, priority, tags, cpu, running, credits, now)
        assert lax.decision == "allow"
        assert lax.violations == strict.violations
        assert lax.constraints == strict.constraints
        assert lax.adjusted_priority == strict.adjusted_priority


@settings(max_examples=300, deadline=None)
@given(case)
def test_strict_never_admits_what_a_quota_forbids(c):
    body, member, priority, tags, cpu, running, credits, now = c
    d = _decide(body, "Strict", member, priority, tags, cpu, running, credits, now)
    q = body["member_quotas"].get(member, body["default_quota"])
    forbidden = (
        cpu >= q["cpu_hours_per_month"]
        or running >= q["max_concurrent_tasks"]
        or TaskPriority(priority) > TaskPriority(q["max_priority"])
        or (q["credits_per_month"] is not None and credits >= q["credits_per_month"])
    )
    if forbidden:
        assert d.decision == "reject"
    # a conflicting set of constraints is never admitted in Strict mode either
    if d.constraints.conflicts:
        assert d.decision == "reject"
    # the adjusted priority always stays within Low..Critical
    assert d.adjusted_priority in list(TaskPriority)
