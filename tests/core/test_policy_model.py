"""The policy model: ICN files load unchanged, round-trip, and bad values are refused with their path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from icn_p2p.core.enums import EnforcementMode, TaskPriority
from icn_p2p.core.policy import (
    CoopSchedulingPolicy,
    DataSovereignty,
    ExecutorFilter,
    MemberPriority,
    MemberQuota,
    RequireCapability,
    TimeWindow,
)

POLICIES = Path(__file__).resolve().parents[2] / "configs" / "policies"

DESIGN_EXAMPLE = {
    "coop_id": "healthcare-coop",
    "governance_domain": "governance:healthcare",
    "rules": [
        {"DataSovereignty": {"region": "eu-central", "tags": ["patient-data"]}},
        {"RequireCapability": {"capability": "encryption", "min_version": "1.0"}},
        {"TimeWindow": {"allowed_hours": [0, 1, 2, 3, 4, 5, 6, 20, 21, 22, 23],
                        "allowed_days": [0, 1, 2, 3, 4, 5, 6], "priorities": ["Low", "Normal"]}},
        {"MemberPriority": {"member": "did:icn:building-automation", "multiplier": 2.0}},
        {"ExecutorFilter": {"whitelist": [], "blacklist": ["did:icn:compromised"]}},
    ],
    "member_quotas": {"did:icn:guest": {"cpu_hours_per_month": 10.0, "max_concurrent_tasks": 1,
                                        "max_priority": "Low", "credits_per_month": 0}},
    "default_quota": {"cpu_hours_per_month": 100.0, "max_concurrent_tasks": 10,
                      "max_priority": "High", "credits_per_month": 1000},
    "enforcement_mode": "Strict",
}

MINIMAL = {"coop_id": "c", "default_quota": {"cpu_hours_per_month": 1.0, "max_concurrent_tasks": 1,
                                             "max_priority": "Low"}}


def test_design_example_round_trips_unchanged():
    policy = CoopSchedulingPolicy.from_json(json.dumps(DESIGN_EXAMPLE))
    assert policy.to_icn_dict() == DESIGN_EXAMPLE
    assert isinstance(policy.rules[0], DataSovereignty)
    assert isinstance(policy.rules[1], RequireCapability)
    assert isinstance(policy.rules[2], TimeWindow)
    assert isinstance(policy.rules[3], MemberPriority)
    assert isinstance(policy.rules[4], ExecutorFilter)
    assert policy.rules[2].priorities == [TaskPriority.LOW, TaskPriority.NORMAL]
    assert CoopSchedulingPolicy.from_json(policy.to_icn_json()) == policy


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*.json")), ids=lambda p: p.name)
def test_example_files_load_and_serialise_back_equivalently(path):
    raw = json.loads(path.read_text())
    policy = CoopSchedulingPolicy.from_json(path.read_text())
    assert policy.to_icn_dict() == raw  # every example spells every field out
    assert CoopSchedulingPolicy.from_dict(json.loads(policy.to_icn_json(indent=None))) == policy


def test_defaults_when_absent():
    policy = CoopSchedulingPolicy.from_dict({
        **MINIMAL,
        "rules": [{"DataSovereignty": {"region": "eu"}}, {"RequireCapability": {"capability": "gpu"}},
                  {"ExecutorFilter": {}}],
    })
    assert policy.governance_domain is None
    assert policy.member_quotas == {}
    assert policy.enforcement_mode is EnforcementMode.STRICT
    assert policy.default_quota.credits_per_month is None
    ds, cap, ef = policy.rules
    assert ds.tags == [] and cap.min_version is None
    assert ef.whitelist == [] and ef.blacklist == []
    out = policy.to_icn_dict()
    assert out["governance_domain"] is None and out["enforcement_mode"] == "Strict"
    assert out["rules"][0] == {"DataSovereignty": {"region": "eu", "tags": []}}
    assert out["default_quota"]["credits_per_month"] is None
    assert CoopSchedulingPolicy.from_dict(MINIMAL).rules == []


def test_quota_for_member_override_replaces_default():
    policy = CoopSchedulingPolicy.from_dict(DESIGN_EXAMPLE)
    assert policy.quota_for("did:icn:guest").max_priority is TaskPriority.LOW
    assert policy.quota_for("did:icn:someone").cpu_hours_per_month == 100.0


def test_content_hash_is_stable_and_sensitive():
    a = CoopSchedulingPolicy.from_dict(DESIGN_EXAMPLE)
    b = CoopSchedulingPolicy.from_json(a.to_icn_json(indent=4))
    assert a.content_hash() == b.content_hash()
    c = CoopSchedulingPolicy.from_dict({**DESIGN_EXAMPLE, "enforcement_mode": "Permissive"})
    assert c.content_hash() != a.content_hash()
    assert len(a.content_hash()) == 64


def _errors(data) -> list[tuple[tuple, str]]:
    text = data if isinstance(data, str) else json.dumps(data)
    with pytest.raises(ValidationError) as info:
        CoopSchedulingPolicy.from_json(text)
    return [(tuple(e["loc"]), e["type"]) for e in info.value.errors()]


def _with_rule(rule):
    return {**MINIMAL, "rules": [rule]}


def _tw(**over):
    body = {"allowed_hours": [1], "allowed_days": [1], "priorities": ["Low"], **over}
    return _with_rule({"TimeWindow": body})


@pytest.mark.parametrize(
    "data, loc",
    [
        (_tw(allowed_hours=[1, 2, 24]), ("rules", 0, "TimeWindow", "allowed_hours", 2)),
        (_tw(allowed_hours=[-1]), ("rules", 0, "TimeWindow", "allowed_hours", 0)),
        (_tw(allowed_days=[0, 7]), ("rules", 0, "TimeWindow", "allowed_days", 1)),
        (_tw(priorities=["Urgent"]), ("rules", 0, "TimeWindow", "priorities", 0)),
        (_tw(priorities=["low"]), ("rules", 0, "TimeWindow", "priorities", 0)),
        (_tw(allowed_hours=["5"]), ("rules", 0, "TimeWindow", "allowed_hours", 0)),
        (_with_rule({"MemberPriority": {"member": "m", "multiplier": 0}}),
         ("rules", 0, "MemberPriority", "multiplier")),
        (_with_rule({"MemberPriority": {"member": "m", "multiplier": -1.5}}),
         ("rules", 0, "MemberPriority", "multiplier")),
        (_with_rule({"MemberPriority": {"member": "m", "multiplier": "2"}}),
         ("rules", 0, "MemberPriority", "multiplier")),
        (_with_rule({"Frobnicate": {}}), ("rules", 0)),
        (_with_rule({"TimeWindow": {}, "DataSovereignty": {}}), ("rules", 0)),
        (_with_rule({"DataSovereignty": {"region": "eu", "colour": "red"}}),
         ("rules", 0, "DataSovereignty", "colour")),
        (_with_rule({"RequireCapability": {"capability": "x", "min_version": "one"}}),
         ("rules", 0, "RequireCapability", "min_version")),
        ({"coop_id": "c"}, ("default_quota",)),
        ({**MINIMAL, "default_quota": {**MINIMAL["default_quota"], "cpu_hours_per_month": -1.0}},
         ("default_quota", "cpu_hours_per_month")),
        ({**MINIMAL, "default_quota": {**MINIMAL["default_quota"], "max_concurrent_tasks": -1}},
         ("default_quota", "max_concurrent_tasks")),
        ({**MINIMAL, "default_quota": {**MINIMAL["default_quota"], "max_concurrent_tasks": "5"}},
         ("default_quota", "max_concurrent_tasks")),
        ({**MINIMAL, "default_quota": {**MINIMAL["default_quota"], "credits_per_month": -5}},
         ("default_quota", "credits_per_month")),
        ({**MINIMAL, "default_quota": {**MINIMAL["default_quota"], "max_priority": "Highest"}},
         ("default_quota", "max_priority")),
        ({**MINIMAL, "enforcement_mode": "Lenient"}, ("enforcement_mode",)),
        ({**MINIMAL, "member_quotas": {"did:icn:g": {"cpu_hours_per_month": 1.0,
                                                     "max_concurrent_tasks": 1.5, "max_priority": "Low"}}},
         ("member_quotas", "did:icn:g", "max_concurrent_tasks")),
        ({**MINIMAL, "coop_id": ""}, ("coop_id",)),
        ({**MINIMAL, "coop_id": 7}, ("coop_id",)),
    ],
)
def test_bad_values_are_refused_with_their_path(data, loc):
    locs = [l for l, _ in _errors(data)]
    assert loc in locs


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_in_json_are_refused(literal):
    text = json.dumps(_with_rule({"MemberPriority": {"member": "m", "multiplier": 1.0}}))
    text = text.replace('"multiplier": 1.0', f'"multiplier": {literal}')
    assert ("rules", 0, "MemberPriority", "multiplier") in [l for l, _ in _errors(text)]
    text = json.dumps(MINIMAL).replace('"cpu_hours_per_month": 1.0', f'"cpu_hours_per_month": {literal}')
    assert ("default_quota", "cpu_hours_per_month") in [l for l, _ in _errors(text)]


def test_nothing_is_coerced():
    # a string for a number, a bool for an int and a number for a string all fail
    assert _errors({**MINIMAL, "default_quota": {**MINIMAL["default_quota"], "cpu_hours_per_month": "1"}})
    assert _errors({**MINIMAL, "default_quota": {**MINIMAL["default_quota"], "max_concurrent_tasks": True}})
    assert _errors(_with_rule({"DataSovereignty": {"region": 5}}))
    assert _errors({**MINIMAL, "rules": {"TimeWindow": {}}})


def test_every_error_is_reported_not_only_the_first():
    data = {**_tw(allowed_hours=[24], allowed_days=[9]), "enforcement_mode": "x"}
    locs = [l for l, _ in _errors(data)]
    assert len(locs) == 3


def test_quota_model_direct():
    q = MemberQuota(cpu_hours_per_month=1.5, max_concurrent_tasks=2, max_priority="Normal")
    assert q.max_priority is TaskPriority.NORMAL
    with pytest.raises(ValidationError):
        MemberQuota(cpu_hours_per_month=math.inf, max_concurrent_tasks=2, max_priority="Normal")


# --- property: any valid policy round-trips through JSON -------------------------------------

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
versions = st.lists(st.integers(0, 30), min_size=1, max_size=3).map(lambda p: ".".join(map(str, p)))
priorities = st.sampled_from([p.value for p in TaskPriority])
floats = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)
quotas = st.fixed_dictionaries({
    "cpu_hours_per_month": floats,
    "max_concurrent_tasks": st.integers(0, 2**32 - 1),
    "max_priority": priorities,
    "credits_per_month": st.none() | st.integers(0, 2**64 - 1),
})
rules = st.one_of(
    st.builds(lambda r, t: {"DataSovereignty": {"region": r, "tags": t}}, names, st.lists(names, max_size=3)),
    st.builds(lambda h, d, p: {"TimeWindow": {"allowed_hours": h, "allowed_days": d, "priorities": p}},
              st.lists(st.integers(0, 23), max_size=24), st.lists(st.integers(0, 6), max_size=7),
              st.lists(priorities, max_size=4)),
    st.builds(lambda m, x: {"MemberPriority": {"member": m, "multiplier": x}}, names,
              st.floats(min_value=1e-6, max_value=1e6, allow_nan=False)),
    st.builds(lambda c, v: {"RequireCapability": {"capability": c, "min_version": v}}, names,
              st.none() | versions),
    st.builds(lambda w, b: {"ExecutorFilter": {"whitelist": w, "blacklist": b}},
              st.lists(names, max_size=3), st.lists(names, max_size=3)),
)
policies = st.fixed_dictionaries({
    "coop_id": names,
    "governance_domain": st.none() | names,
    "rules": st.lists(rules, max_size=6),
    "member_quotas": st.dictionaries(names, quotas, max_size=4),
    "default_quota": quotas,
    "enforcement_mode": st.sampled_from([m.value for m in EnforcementMode]),
})


@settings(max_examples=150, deadline=None)
@given(policies)
def test_any_valid_policy_round_trips_through_json(data):
    policy = CoopSchedulingPolicy.from_json(json.dumps(data))
    assert policy.to_icn_dict() == data
    again = CoopSchedulingPolicy.from_json(policy.to_icn_json())
    assert again == policy
    assert again.content_hash() == policy.content_hash()
