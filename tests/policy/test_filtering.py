"""Executors against placement constraints: who passes, and every reason for who does not."""

from __future__ import annotations

import pytest

from icn_p2p.core.decision import CapabilityRequirement, PlacementConstraints
from icn_p2p.core.policy import CoopSchedulingPolicy
from icn_p2p.core.task import ExecutorInfo
from icn_p2p.policy.admission import placement_constraints
from icn_p2p.policy.filtering import check_executor, filter_executors


def ex(did, region="eu-central", **caps) -> ExecutorInfo:
    return ExecutorInfo(did=did, region=region, capabilities={k.replace("_", "-"): v for k, v in caps.items()})


def req(cap, v=None) -> CapabilityRequirement:
    return CapabilityRequirement(capability=cap, min_version=v)


def test_no_constraints_everyone_passes():
    assert check_executor(PlacementConstraints(), ex("did:a", region=None)) == []


def test_region():
    c = PlacementConstraints(required_region="eu-central")
    assert check_executor(c, ex("did:a")) == []
    assert check_executor(c, ex("did:a", region="us-west")) == ["region us-west is not the required eu-central"]
    assert check_executor(c, ex("did:a", region=None)) == ["advertises no region; eu-central is required"]


def test_whitelist_and_blacklist():
    c = PlacementConstraints(allowed_executors=["did:a", "did:b"], forbidden_executors=["did:b"])
    assert check_executor(c, ex("did:a")) == []
    assert check_executor(c, ex("did:b")) == ["blacklisted"]
    assert check_executor(c, ex("did:c")) == ["not in the whitelist"]
    assert check_executor(PlacementConstraints(forbidden_executors=["did:c"]), ex("did:c")) == ["blacklisted"]


@pytest.mark.parametrize(
    "have, need, reason",
    [
        ("1.0", "1.0", None),
        ("1.10", "1.9", None),
        ("2", "2.0", None),
        ("0.9", "1.0", "lacks capability encryption >= 1.0 (has 0.9)"),
        ("1.9", "1.10", "lacks capability encryption >= 1.10 (has 1.9)"),
        (None, "1.0", "lacks capability encryption >= 1.0"),
        (None, None, "lacks capability encryption"),
        ("0.1", None, None),
    ],
)
def test_capability_versions_compare_as_versions(have, need, reason):
    caps = {} if have is None else {"encryption": have}
    e = ExecutorInfo(did="did:a", capabilities=caps)
    got = check_executor(PlacementConstraints(required_capabilities=[req("encryption", need)]), e)
    assert got == ([] if reason is None else [reason])


def test_every_reason_is_listed_and_conflicts_exclude_everyone():
    c = PlacementConstraints(
        required_region="eu-central", allowed_executors=["did:a"], forbidden_executors=["did:z"],
        required_capabilities=[req("gpu"), req("encryption", "2")],
    )
    reasons = check_executor(c, ex("did:z", region="us-west", encryption="1.5"))
    assert reasons == ["region us-west is not the required eu-central", "not in the whitelist", "blacklisted",
                       "lacks capability gpu", "lacks capability encryption >= 2 (has 1.5)"]
    conflicted = PlacementConstraints(conflicts=["data must stay in more than one region at once"])
    assert check_executor(conflicted, ex("did:a")) == [
        "constraints conflict: data must stay in more than one region at once"]


def test_filter_executors_keeps_order_and_explains_the_rest():
    c = PlacementConstraints(required_region="eu-central", forbidden_executors=["did:b"],
                             required_capabilities=[req("encryption", "1.0")])
    executors = [ex("did:d", encryption="1.2"), ex("did:a", encryption="1.0"), ex("did:b", encryption="3"),
                 ex("did:c", region="us-west", encryption="1.0"), ex("did:e")]
    result = filter_executors(c, executors)
    assert [e.did for e in result.feasible] == ["did:d", "did:a"]
    assert result.excluded == {
        "did:b": ["blacklisted"],
        "did:c": ["region us-west is not the required eu-central"],
        "did:e": ["lacks capability encryption >= 1.0"],
    }
    assert filter_executors(c, []).feasible == []


def test_policy_to_constraints_to_filter_end_to_end():
    p = CoopSchedulingPolicy.from_dict({
        "coop_id": "research:biolab",
        "rules": [{"DataSovereignty": {"region": "eu-central", "tags": ["patient-data"]}},
                  {"RequireCapability": {"capability": "hipaa-compliant", "min_version": "1.0"}},
                  {"ExecutorFilter": {"whitelist": [], "blacklist": ["did:bad"]}}],
        "default_quota": {"cpu_hours_per_month": 100.0, "max_concurrent_tasks": 10, "max_priority": "High"},
    })
    pool = [ex("did:eu", hipaa_compliant="1.1"), ex("did:us", region="us-west", hipaa_compliant="2.0"),
            ex("did:bad", hipaa_compliant="9"), ex("did:old", hipaa_compliant="0.9")]
    patient = filter_executors(placement_constraints(p, ["patient-data"]), pool)
    assert [e.did for e in patient.feasible] == ["did:eu"]
    batch = filter_executors(placement_constraints(p, ["batch"]), pool)
    assert [e.did for e in batch.feasible] == ["did:eu", "did:us"]
    assert set(batch.excluded) == {"did:bad", "did:old"}
