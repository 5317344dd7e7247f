"""Decision metrics are recorded beside evaluate, not inside it."""

from __future__ import annotations

import logging

from icn_p2p import metrics
from icn_p2p.core.policy import CoopSchedulingPolicy
from icn_p2p.core.task import ComputeTask
from icn_p2p.core.usage import MemberUsage
from icn_p2p.policy.admission import evaluate, record_decision_metrics


def _value(name: str, **labels) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def _policy(coop: str, mode: str) -> CoopSchedulingPolicy:
    return CoopSchedulingPolicy.from_dict({
        "coop_id": coop, "enforcement_mode": mode,
        "rules": [{"TimeWindow": {"allowed_hours": [], "allowed_days": [], "priorities": ["Normal"]}}],
        "default_quota": {"cpu_hours_per_month": 1.0, "max_concurrent_tasks": 1, "max_priority": "High",
                          "credits_per_month": 0},
    })


def test_strict_rejection_counts_violations_quotas_and_the_rejection():
    coop = "metrics-coop-strict"
    before_hist = _value("icn_policy_evaluation_seconds_count")
    task = ComputeTask(id="t", coop_id=coop, submitter="m")
    d = evaluate(_policy(coop, "Strict"), task, "m", MemberUsage(cpu_hours_this_month=2.0), 0)
    record_decision_metrics(d, 12e-6)
    assert _value("icn_policy_violations_total", coop=coop, rule="quota.cpu_hours") == 1
    assert _value("icn_policy_violations_total", coop=coop, rule="TimeWindow") == 1
    assert _value("icn_quota_exceeded_total", coop=coop, quota="cpu_hours") == 1
    assert _value("icn_quota_exceeded_total", coop=coop, quota="credits") == 1
    assert _value("icn_quota_exceeded_total", coop=coop, quota="TimeWindow") == 0
    assert _value("icn_tasks_rejected_policy_total", coop=coop) == 1
    assert _value("icn_policy_evaluation_seconds_count") == before_hist + 1


def test_permissive_admission_counts_violations_but_no_rejection(caplog):
    coop = "metrics-coop-permissive"
    task = ComputeTask(id="t", coop_id=coop, submitter="m")
    d = evaluate(_policy(coop, "Permissive"), task, "m", MemberUsage(), 0)
    with caplog.at_level(logging.INFO, logger="icn_p2p.policy.admission"):
        record_decision_metrics(d, 1e-6)
    assert d.decision == "allow"
    assert _value("icn_policy_violations_total", coop=coop, rule="quota.credits") == 1
    assert _value("icn_tasks_rejected_policy_total", coop=coop) == 0
    assert "policy_violation_admitted" in caplog.text and f"coop={coop}" in caplog.text
