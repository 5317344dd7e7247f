"""Structured policy diffs."""

from __future__ import annotations

import pydantic
import pytest

from icn_p2p.core.policy import CoopSchedulingPolicy
from icn_p2p.policy.diff import diff_policies

QUOTA = {"cpu_hours_per_month": 10.0, "max_concurrent_tasks": 1, "max_priority": "Low"}
BASE = {
    "coop_id": "c",
    "default_quota": QUOTA,
    "rules": [{"ExecutorFilter": {"blacklist": ["did:icn:bad"]}},
              {"DataSovereignty": {"region": "eu", "tags": ["p"]}}],
    "member_quotas": {"did:icn:a": QUOTA, "did:icn:b": QUOTA},
}


def test_equal_policies_have_an_empty_diff_even_with_defaults_spelled_out():
    explicit = CoopSchedulingPolicy.from_dict(BASE).to_icn_dict()
    d = diff_policies(BASE, explicit)
    assert d.empty and d.summary() == "no change"
    reordered = {**BASE, "rules": list(reversed(BASE["rules"]))}
    assert diff_policies(BASE, reordered).empty


def test_fields_rules_and_quotas():
    new = {
        **BASE,
        "enforcement_mode": "Permissive",
        "default_quota": {**QUOTA, "max_priority": "High"},
        "rules": [BASE["rules"][1], {"RequireCapability": {"capability": "gpu", "min_version": "1.2"}}],
        "member_quotas": {"did:icn:a": {**QUOTA, "cpu_hours_per_month": 2.0},
                          "did:icn:c": QUOTA},
    }
    d = diff_policies(CoopSchedulingPolicy.from_dict(BASE), new)
    assert [(f.path, f.old, f.new) for f in d.fields] == [
        ("default_quota.max_priority", "Low", "High"),
        ("enforcement_mode", "Strict", "Permissive"),
    ]
    assert d.rules_added == ('{"RequireCapability":{"capability":"gpu","min_version":"1.2"}}',)
    assert d.rules_removed == ('{"ExecutorFilter":{"blacklist":["did:icn:bad"],"whitelist":[]}}',)
    assert [q.member for q in d.quotas_added] == ["did:icn:c"] and d.quotas_added[0].old is None
    assert [q.member for q in d.quotas_removed] == ["did:icn:b"] and d.quotas_removed[0].new is None
    (changed,) = d.quotas_changed
    assert changed.member == "did:icn:a"
    assert [(f.path, f.old, f.new) for f in changed.fields] == [("cpu_hours_per_month", 10.0, 2.0)]
    s = d.summary()
    for part in ("+rule", "-rule", "+quota did:icn:c", "-quota did:icn:b", "~quota did:icn:a",
                 'enforcement_mode: "Strict" -> "Permissive"'):
        assert part in s


def test_duplicate_rules_count_as_a_multiset():
    one = {**BASE, "rules": [BASE["rules"][0]]}
    two = {**BASE, "rules": [BASE["rules"][0], BASE["rules"][0]]}
    d = diff_policies(one, two)
    assert d.rules_added == ('{"ExecutorFilter":{"blacklist":["did:icn:bad"],"whitelist":[]}}',)
    assert not d.rules_removed


def test_from_nothing_and_to_nothing():
    d = diff_policies(None, BASE)
    assert {f.path for f in d.fields} >= {"coop_id", "default_quota"}
    assert len(d.rules_added) == 2 and len(d.quotas_added) == 2
    back = diff_policies(BASE, None)
    assert len(back.rules_removed) == 2 and {f.path for f in back.fields if f.new is None} >= {"coop_id"}


def test_invalid_policy_is_an_error():
    with pytest.raises(pydantic.ValidationError):
        diff_policies({"coop_id": "c"}, BASE)
