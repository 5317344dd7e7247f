"""The admission decision: may this member submit this task now, and on what terms.

``evaluate`` is a pure, synchronous function of the policy, the task, the
submitter, the submitter's merged usage and the time (passed in). It follows
ICN's order (quotas, then time windows, then member priority, then placement
constraints) but lists every violated rule, not only the first, each with the
numbers and what would make it pass.

Admission runs for every submitted task, so what can be worked out once per
policy (the member -> multiplier map, the time windows, the placement
constraints of an untagged task, the content hash) is computed on first use and
kept in a cache keyed by the policy object's identity. Policies are frozen, so
the cache never goes stale; an entry goes away with its policy.
"""

from __future__ import annotations

import logging
import math
import weakref
from bisect import bisect_right
from dataclasses import dataclass, field
from functools import lru_cache
from datetime import datetime, timezone
from typing import Iterable

from icn_p2p.core.clock import month_key
from icn_p2p.core.decision import (
    CapabilityRequirement,
    PlacementConstraints,
    PolicyDecision,
    Violation,
)
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
from icn_p2p.core.task import ComputeTask
from icn_p2p.core.usage import MemberUsage
from icn_p2p.core.versions import parse_version

log = logging.getLogger(__name__)

__all__ = [
    "RULE_CONCURRENT",
    "RULE_CPU_HOURS",
    "RULE_CREDITS",
    "RULE_MAX_PRIORITY",
    "adjust_priority",
    "evaluate",
    "explain",
    "placement_constraints",
    "policy_hash",
    "record_decision_metrics",
]

# Stable violation names: metrics labels and clients match on these.
RULE_CPU_HOURS = "quota.cpu_hours"
RULE_CONCURRENT = "quota.concurrent_tasks"
RULE_MAX_PRIORITY = "quota.max_priority"
RULE_CREDITS = "quota.credits"
RULE_TIME_WINDOW = "TimeWindow"
RULE_SOVEREIGNTY = "DataSovereignty"
RULE_EXECUTOR_FILTER = "ExecutorFilter"

_PRIORITIES: tuple[TaskPriority, ...] = tuple(TaskPriority)
_RANK: dict[TaskPriority, int] = {p: i for i, p in enumerate(_PRIORITIES)}
_MAX_RANK = len(_PRIORITIES) - 1

_STRICT = EnforcementMode.STRICT
_MS_PER_HOUR = 3_600_000
_MS_PER_DAY = 86_400_000
_EPOCH_WEEKDAY = 4  # 1970-01-01 was a Thursday (0 = Sunday)
_DAY_NAMES = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")


# --- building frozen models without re-validating what is already valid ------------


def _construct_via_dict(cls, fields: dict):
    obj = cls.__new__(cls)
    setattr_ = object.__setattr__
    setattr_(obj, "__dict__", fields)
    setattr_(obj, "__pydantic_fields_set__", set(fields))
    setattr_(obj, "__pydantic_extra__", None)
    setattr_(obj, "__pydantic_private__", None)
    return obj


def _pick_constructor():
    """``model_construct`` costs ~3 µs a model; filling ``__dict__`` costs under 1 µs.

    Use the quick way only if it gives exactly what ``model_construct`` gives on
    this pydantic version (checked once, at import).
    """
    sample = dict(rule="r", reason="why", member="m", observed=1, limit=2, remedy="x")
    try:
        quick = _construct_via_dict(Violation, dict(sample))
        slow = Violation.model_construct(**sample)
        if quick == slow and quick.model_dump() == slow.model_dump() and repr(quick) == repr(slow):
            return _construct_via_dict
    except Exception:  # pragma: no cover - a pydantic whose internals differ
        pass
    return lambda cls, fields: cls.model_construct(**fields)  # pragma: no cover


_new = _pick_constructor()


def _violation(**fields) -> Violation:
    return _new(Violation, fields)


# --- priority arithmetic ----------------------------------------------------------


def _round_half_away(x: float) -> int:
    """Rust's ``f64::round``: halves go away from zero (2.5 -> 3, -2.5 -> -3)."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def adjust_priority(priority: TaskPriority, multiplier: float | None) -> TaskPriority:
    """``round(rank × multiplier)`` clamped to Low..Critical; no multiplier leaves it alone."""
    if multiplier is None:
        return priority
    rank = _round_half_away(_RANK[priority] * multiplier)
    return _PRIORITIES[0 if rank < 0 else _MAX_RANK if rank > _MAX_RANK else rank]


# --- per-policy index -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Window:
    rule: TimeWindow
    hours: frozenset[int]
    days: frozenset[int]
    priorities: frozenset[TaskPriority]
    open_hours_of_week: tuple[int, ...]  # day * 24 + hour, sorted: when the window is open
    hours_text: str  # "22:00-05:59"
    days_text: str  # "Saturday, Sunday"
    when_text: str  # "between 22:00 and 05:59 UTC on Saturday, Sunday"
    never_text: str  # remedy when the window never opens


@dataclass(slots=True)
class _PolicyIndex:
    """What admission needs from one policy, worked out once."""

    policy_hash: str
    multipliers: dict[str, float]
    windows: tuple[_Window, ...]
    tagged_sovereignty: tuple[DataSovereignty, ...]
    untagged_constraints: PlacementConstraints
    untagged_violations: tuple[Violation, ...]
    by_tags: dict[tuple[str, ...], tuple[PlacementConstraints, tuple[Violation, ...]]] = field(
        default_factory=dict
    )


_INDEX: dict[int, tuple[weakref.ref, _PolicyIndex]] = {}
_BY_TAGS_LIMIT = 256


def _forget(key: int) -> None:
    _INDEX.pop(key, None)


def _index(policy: CoopSchedulingPolicy) -> _PolicyIndex:
    key = id(policy)
    entry = _INDEX.get(key)
    if entry is not None and entry[0]() is policy:
        return entry[1]
    idx = _build_index(policy)
    _INDEX[key] = (weakref.ref(policy, lambda _r, k=key: _forget(k)), idx)
    return idx


def _build_index(policy: CoopSchedulingPolicy) -> _PolicyIndex:
    multipliers: dict[str, float] = {}
    windows: list[_Window] = []
    for rule in policy.rules:
        if isinstance(rule, MemberPriority):
            multipliers.setdefault(rule.member, rule.multiplier)  # the first rule wins
        elif isinstance(rule, TimeWindow):
            windows.append(_make_window(rule))
    tagged = tuple(r for r in policy.rules if isinstance(r, DataSovereignty) and r.tags)
    constraints, violations = _build_constraints(policy, ())
    return _PolicyIndex(
        policy_hash=policy.content_hash(),
        multipliers=multipliers,
        windows=tuple(windows),
        tagged_sovereignty=tagged,
        untagged_constraints=constraints,
        untagged_violations=tuple(violations),
    )


def _make_window(rule: TimeWindow) -> _Window:
    hours, days, prios = frozenset(rule.allowed_hours), frozenset(rule.allowed_days), frozenset(rule.priorities)
    hours_text, days_text = hour_ranges(hours), day_names(days)
    when = []
    if len(hours) < 24:
        if ", " in hours_text:
            when.append(f"in {hours_text} UTC")
        else:
            when.append(f"between {hours_text.replace('-', ' and ')} UTC")
    if len(days) < 7:
        when.append(f"on {days_text}")
    others = ", ".join(p.value for p in _PRIORITIES if p not in prios) or "none"
    return _Window(
        rule=rule, hours=hours, days=days, priorities=prios,
        open_hours_of_week=tuple(d * 24 + h for d in sorted(days) for h in sorted(hours)),
        hours_text=hours_text, days_text=days_text, when_text=" ".join(when),
        never_text=f"this window never opens; submit at a priority it does not list ({others})",
    )


def policy_hash(policy: CoopSchedulingPolicy) -> str:
    """``policy.content_hash()``, computed once per policy object."""
    return _index(policy).policy_hash


# --- placement constraints ----------------------------------------------------------


def _build_constraints(
    policy: CoopSchedulingPolicy, task_tags: Iterable[str]
) -> tuple[PlacementConstraints, list[Violation]]:
    """Combine every applicable placement rule; all of them hold at once."""
    tags = tuple(task_tags)
    regions: list[str] = []
    region_tags: dict[str, list[str]] = {}
    whitelists: list[list[str]] = []
    blacklist: list[str] = []
    caps: dict[str, str | None] = {}
    for rule in policy.rules:
        if isinstance(rule, DataSovereignty):
            if rule.applies_to(tags):
                if rule.region not in regions:
                    regions.append(rule.region)
                region_tags.setdefault(rule.region, []).extend(
                    t for t in rule.tags if t in tags
                )
        elif isinstance(rule, RequireCapability):
            if rule.capability not in caps:
                caps[rule.capability] = rule.min_version
            else:
                caps[rule.capability] = _higher_version(caps[rule.capability], rule.min_version)
        elif isinstance(rule, ExecutorFilter):
            if rule.whitelist:
                whitelists.append(rule.whitelist)
            for did in rule.blacklist:
                if did not in blacklist:
                    blacklist.append(did)

    conflicts: list[str] = []
    violations: list[Violation] = []
    if len(regions) > 1:
        why = ", ".join(
            f"{r} (for {', '.join(sorted(set(region_tags[r]))) or 'every task'})" for r in regions
        )
        text = f"data must stay in more than one region at once: {why}"
        conflicts.append(text)
        violations.append(
            _violation(
                rule=RULE_SOVEREIGNTY,
                reason=f"No executor can be feasible: {text}.",
                member=None,
                observed=list(tags),
                limit=regions,
                remedy="the coop must reconcile its DataSovereignty rules, "
                "or submit the task without the conflicting tags",
            )
        )

    allowed: list[str] = []
    if whitelists:
        allowed = [d for d in whitelists[0] if all(d in w for w in whitelists[1:])]
        allowed = list(dict.fromkeys(allowed))
        if not allowed:
            text = "the executor whitelists have no executor in common"
        elif all(d in blacklist for d in allowed):
            text = "every whitelisted executor is also blacklisted"
        else:
            text = ""
        if text:
            conflicts.append(text)
            violations.append(
                _violation(
                    rule=RULE_EXECUTOR_FILTER,
                    reason=f"No executor can be feasible: {text}.",
                    member=None,
                    observed=None,
                    limit={"whitelists": whitelists, "blacklist": blacklist},
                    remedy="the coop must reconcile its ExecutorFilter rules",
                )
            )
    constraints = PlacementConstraints.model_construct(
        required_region=regions[0] if len(regions) == 1 else None,
        allowed_executors=allowed,
        forbidden_executors=blacklist,
        required_capabilities=[
            CapabilityRequirement.model_construct(capability=c, min_version=v) for c, v in caps.items()
        ],
        conflicts=conflicts,
    )
    return constraints, violations


def _higher_version(a: str | None, b: str | None) -> str | None:
    if a is None:
        return b
    if b is None:
        return a
    return b if parse_version(b) > parse_version(a) else a


def placement_constraints(policy: CoopSchedulingPolicy, task_tags: Iterable[str] = ()) -> PlacementConstraints:
    """The hard executor filters ``policy`` sets for a task carrying ``task_tags``."""
    return _constraints_for(policy, _index(policy), tuple(task_tags))[0]


def _constraints_for(
    policy: CoopSchedulingPolicy, idx: _PolicyIndex, tags: tuple[str, ...] | list[str]
) -> tuple[PlacementConstraints, tuple[Violation, ...]]:
    if not tags or not idx.tagged_sovereignty:
        return idx.untagged_constraints, idx.untagged_violations
    key = tuple(tags)
    hit = idx.by_tags.get(key)
    if hit is None:
        relevant = frozenset(t for r in idx.tagged_sovereignty for t in r.tags if t in key)
        if relevant:
            constraints, violations = _build_constraints(policy, sorted(relevant))
            hit = (constraints, tuple(violations))
        else:
            hit = (idx.untagged_constraints, idx.untagged_violations)
        if len(idx.by_tags) < _BY_TAGS_LIMIT:
            idx.by_tags[key] = hit
    return hit


# --- the decision ---------------------------------------------------------------------


def evaluate(
    policy: CoopSchedulingPolicy,
    task: ComputeTask,
    submitter: str,
    usage: MemberUsage,
    now_ms: int,
) -> PolicyDecision:
    """Decide admission of ``task`` from ``submitter`` at ``now_ms`` (UTC ms) under ``policy``.

    Strict rejects when anything is violated; Permissive and Monitoring admit and
    list the same violations (the caller logs or only counts them).
    """
    if task.coop_id != policy.coop_id:
        raise ValueError(
            f"task {task.id!r} belongs to coop {task.coop_id!r}, not to {policy.coop_id!r}"
        )
    idx = _index(policy)
    quota = policy.member_quotas.get(submitter)
    if quota is None:
        quota = policy.default_quota
    priority = task.priority
    violations: list[Violation] = []

    # 1. quotas, in ICN's order
    if usage.cpu_hours_this_month >= quota.cpu_hours_per_month:
        violations.append(_cpu_violation(submitter, usage, quota, now_ms))
    if usage.concurrent_tasks >= quota.max_concurrent_tasks:
        violations.append(_concurrent_violation(submitter, usage, quota))
    if _RANK[priority] > _RANK[quota.max_priority]:
        violations.append(_priority_violation(submitter, priority, quota))
    credits = quota.credits_per_month
    if credits is not None and usage.credits_spent_this_month >= credits:
        violations.append(_credits_violation(submitter, usage, credits, now_ms))

    # 2. time windows, judged on the priority as submitted
    if idx.windows:
        hour = (now_ms // _MS_PER_HOUR) % 24
        day = (now_ms // _MS_PER_DAY + _EPOCH_WEEKDAY) % 7
        for w in idx.windows:
            if priority in w.priorities and (hour not in w.hours or day not in w.days):
                violations.append(_window_violation(submitter, priority, w, hour, day, now_ms))

    # 3. member priority: the first rule naming the member wins
    adjusted = adjust_priority(priority, idx.multipliers.get(submitter))

    # 4. placement constraints
    constraints, conflict_violations = _constraints_for(policy, idx, task.tags)
    if conflict_violations:
        violations.extend(conflict_violations)

    mode = policy.enforcement_mode
    rejected = bool(violations) and mode is _STRICT
    return _new(PolicyDecision, {
        "decision": "reject" if rejected else "allow",
        "adjusted_priority": adjusted,
        "submitted_priority": priority,
        "constraints": constraints,
        "violations": violations,
        "enforcement_mode": mode,
        "coop_id": policy.coop_id,
        "member": submitter,
        "evaluated_at_ms": now_ms,
        "policy_hash": idx.policy_hash,
    })


# --- violations (only built when something fails) ----------------------------------


def _fmt_num(x: float) -> str:
    """10.0, 9.25, and small figures to 3 significant digits (0.000125), never a misleading 0.00."""
    if abs(x - round(x, 1)) < 1e-9:
        return f"{x:.1f}"
    if abs(x) >= 0.01:
        return f"{x:.2f}"
    return f"{x:.3g}"


@lru_cache(maxsize=64)
def _month_of_day(day: int) -> tuple[str, str]:
    """(``YYYY-MM`` of a UTC day number, the start of the next month as ``YYYY-MM-01T00:00Z``)."""
    key = month_key(day * _MS_PER_DAY)
    year, mon = int(key[:4]), int(key[5:7])
    year, mon = (year + 1, 1) if mon == 12 else (year, mon + 1)
    return key, f"{year:04d}-{mon:02d}-01T00:00Z"


def _this_month(now_ms: int) -> str:
    return _month_of_day(now_ms // _MS_PER_DAY)[0]


def _next_month(now_ms: int) -> str:
    return _month_of_day(now_ms // _MS_PER_DAY)[1]


def _iso_minute(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


def _cpu_violation(member: str, usage: MemberUsage, quota: MemberQuota, now_ms: int) -> Violation:
    used, limit = usage.cpu_hours_this_month, quota.cpu_hours_per_month
    return _violation(
        rule=RULE_CPU_HOURS,
        reason=f"Monthly CPU quota exceeded: {_fmt_num(used)}/{_fmt_num(limit)} hours used in "
        f"{_this_month(now_ms)}.",
        member=member,
        observed=used,
        limit=limit,
        remedy=f"wait until {_next_month(now_ms)} (monthly reset), "
        "or ask the coop to raise cpu_hours_per_month",
    )


def _concurrent_violation(member: str, usage: MemberUsage, quota: MemberQuota) -> Violation:
    running, limit = usage.concurrent_tasks, quota.max_concurrent_tasks
    need = running - limit + 1
    return _violation(
        rule=RULE_CONCURRENT,
        reason=f"Concurrent task limit reached: {running}/{limit} tasks running.",
        member=member,
        observed=running,
        limit=limit,
        remedy=f"wait for {need} of your running task{'s' if need != 1 else ''} to finish",
    )


def _priority_violation(member: str, priority: TaskPriority, quota: MemberQuota) -> Violation:
    return _violation(
        rule=RULE_MAX_PRIORITY,
        reason=f"Task priority {priority.value} exceeds the member's limit {quota.max_priority.value}.",
        member=member,
        observed=priority.value,
        limit=quota.max_priority.value,
        remedy=f"submit at priority {quota.max_priority.value} or lower",
    )


def _credits_violation(member: str, usage: MemberUsage, credits: int, now_ms: int) -> Violation:
    spent = usage.credits_spent_this_month
    return _violation(
        rule=RULE_CREDITS,
        reason=f"Monthly credit limit reached: {spent}/{credits} credits spent in {_this_month(now_ms)}.",
        member=member,
        observed=spent,
        limit=credits,
        remedy=f"wait until {_next_month(now_ms)} (monthly reset), "
        "or ask the coop to raise credits_per_month",
    )


def hour_ranges(hours: Iterable[int]) -> str:
    """``[0..5, 22, 23]`` -> ``"22:00-05:59"``: contiguous UTC ranges, wrapping midnight."""
    hs = sorted(set(hours))
    if not hs:
        return "no hour"
    if len(hs) == 24:
        return "any hour"
    runs: list[list[int]] = []
    for h in hs:
        if runs and h == runs[-1][1] + 1:
            runs[-1][1] = h
        else:
            runs.append([h, h])
    if len(runs) > 1 and runs[0][0] == 0 and runs[-1][1] == 23:
        first = runs.pop(0)
        runs[-1][1] = first[1]
    return ", ".join(f"{a:02d}:00-{b:02d}:59" for a, b in runs)


def day_names(days: Iterable[int]) -> str:
    ds = sorted(set(days))
    if not ds:
        return "no day"
    if len(ds) == 7:
        return "any day"
    return ", ".join(_DAY_NAMES[d] for d in ds)


def _next_allowed(w: _Window, now_ms: int) -> int | None:
    """The start of the next UTC hour at which ``w`` allows submission, within a week."""
    table = w.open_hours_of_week
    if not table:
        return None
    hour_index = now_ms // _MS_PER_HOUR
    now_how = ((hour_index // 24 + _EPOCH_WEEKDAY) % 7) * 24 + hour_index % 24
    i = bisect_right(table, now_how)
    ahead = table[i] - now_how if i < len(table) else table[0] + 7 * 24 - now_how
    return (hour_index + ahead) * _MS_PER_HOUR


def _window_violation(
    member: str, priority: TaskPriority, w: _Window, hour: int, day: int, now_ms: int
) -> Violation:
    parts = []
    if hour not in w.hours:
        parts.append(f"at {hour:02d}:00 UTC (allowed: {w.hours_text})")
    if day not in w.days:
        parts.append(f"on {_DAY_NAMES[day]} (allowed: {w.days_text})")
    nxt = _next_allowed(w, now_ms)
    remedy = w.never_text if nxt is None else f"submit {w.when_text} (next: {_iso_hour(nxt // _MS_PER_HOUR)})"
    return _violation(
        rule=RULE_TIME_WINDOW,
        reason=f"{priority.value}-priority tasks may not be submitted {' or '.join(parts)}.",
        member=member,
        observed={"hour": hour, "day": day},
        limit={"allowed_hours": sorted(w.hours), "allowed_days": sorted(w.days)},
        remedy=remedy,
    )


@lru_cache(maxsize=1024)
def _iso_hour(hour_index: int) -> str:
    return _iso_minute(hour_index * _MS_PER_HOUR)


# --- around the decision: metrics and explanation --------------------------------------


def record_decision_metrics(decision: PolicyDecision, seconds: float) -> None:
    """Count a decision's violations and rejection, and observe how long it took."""
    from icn_p2p import metrics

    coop = decision.coop_id
    for v in decision.violations:
        metrics.POLICY_VIOLATIONS.labels(coop=coop, rule=v.rule).inc()
        if v.rule.startswith("quota."):
            metrics.QUOTA_EXCEEDED.labels(coop=coop, quota=v.rule[len("quota."):]).inc()
    if decision.decision == "reject":
        metrics.TASKS_REJECTED_POLICY.labels(coop=coop).inc()
    metrics.POLICY_EVALUATION_SECONDS.observe(seconds)
    if decision.violations and decision.enforcement_mode is EnforcementMode.PERMISSIVE:
        log.info(
            "policy_violation_admitted coop=%s member=%s rules=%s",
            coop, decision.member, ",".join(v.rule for v in decision.violations),
        )


def explain(decision: PolicyDecision) -> str:
    """A readable, multi-line account of a decision: verdict, each violation, constraints."""
    verdict = "ALLOWED" if decision.decision == "allow" else "REJECTED"
    lines = [
        f"{verdict} for {decision.member} in {decision.coop_id} "
        f"({decision.enforcement_mode.value} enforcement)"
    ]
    if decision.adjusted_priority != decision.submitted_priority:
        lines.append(
            f"priority: {decision.submitted_priority.value} -> {decision.adjusted_priority.value} "
            "(member priority rule)"
        )
    else:
        lines.append(f"priority: {decision.adjusted_priority.value}")
    if decision.violations:
        if decision.decision == "allow":
            lines.append(f"{len(decision.violations)} violation(s), admitted anyway:")
        else:
            lines.append(f"{len(decision.violations)} violation(s):")
        for v in decision.violations:
            lines.append(f"  - [{v.rule}] {v.reason}")
            if v.remedy:
                lines.append(f"    to pass: {v.remedy}")
    c = decision.constraints
    if c.required_region:
        lines.append(f"runs only in region {c.required_region}")
    if c.allowed_executors:
        lines.append(f"runs only on: {', '.join(c.allowed_executors)}")
    if c.forbidden_executors:
        lines.append(f"never on: {', '.join(c.forbidden_executors)}")
    for req in c.required_capabilities:
        ver = f" >= {req.min_version}" if req.min_version else ""
        lines.append(f"needs capability {req.capability}{ver}")
    for conflict in c.conflicts:
        lines.append(f"no executor can be feasible: {conflict}")
    return "\n".join(lines)
