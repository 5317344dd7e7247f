"""What changed between two versions of a coop's policy.

Used by the history and audit views. Works on ICN dicts (or policies) and
compares them normalised (defaults filled in), so ``{"rules": []}`` and an
absent ``rules`` are the same. Rules are compared as a multiset of their
canonical JSON (the order of rules carries no meaning for admission except
``MemberPriority``'s first-match, which shows up as a removed + added pair
when the order of two rules naming one member changes). Member quotas are
compared per member; every other field is compared by JSON path.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict

from icn_p2p.core.policy import CoopSchedulingPolicy

__all__ = ["FieldChange", "PolicyDiff", "QuotaChange", "diff_policies"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class FieldChange(_Frozen):
    path: str  # dotted JSON path, e.g. "default_quota.max_priority"
    old: Any = None
    new: Any = None


class QuotaChange(_Frozen):
    member: str
    old: dict[str, Any] | None  # None: quota added
    new: dict[str, Any] | None  # None: quota removed
    fields: tuple[FieldChange, ...] = ()


class PolicyDiff(_Frozen):
    """A structured difference; empty when the two policies are equal."""

    fields: tuple[FieldChange, ...] = ()
    rules_added: tuple[str, ...] = ()  # canonical JSON of each rule
    rules_removed: tuple[str, ...] = ()
    quotas_added: tuple[QuotaChange, ...] = ()
    quotas_removed: tuple[QuotaChange, ...] = ()
    quotas_changed: tuple[QuotaChange, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.fields or self.rules_added or self.rules_removed or self.quotas_added
                    or self.quotas_removed or self.quotas_changed)

    def summary(self) -> str:
        """One line for logs and CLI tables."""
        if self.empty:
            return "no change"
        parts = [f"{f.path}: {json.dumps(f.old)} -> {json.dumps(f.new)}" for f in self.fields]
        parts += [f"+rule {r}" for r in self.rules_added]
        parts += [f"-rule {r}" for r in self.rules_removed]
        parts += [f"+quota {q.member}" for q in self.quotas_added]
        parts += [f"-quota {q.member}" for q in self.quotas_removed]
        parts += [f"~quota {q.member}" for q in self.quotas_changed]
        return "; ".join(parts)


def _normalise(policy: CoopSchedulingPolicy | Mapping[str, Any] | None) -> dict[str, Any]:
    if policy is None:
        return {}
    if isinstance(policy, CoopSchedulingPolicy):
        return policy.to_icn_dict()
    return CoopSchedulingPolicy.from_dict(dict(policy)).to_icn_dict()


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _field_changes(old: Any, new: Any, path: str) -> list[FieldChange]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[FieldChange] = []
        for key in sorted(set(old) | set(new)):
            sub = f"{path}.{key}" if path else key
            if key not in old:
                out.append(FieldChange(path=sub, old=None, new=new[key]))
            elif key not in new:
                out.append(FieldChange(path=sub, old=old[key], new=None))
            else:
                out.extend(_field_changes(old[key], new[key], sub))
        return out
    if _canon(old) != _canon(new):
        return [FieldChange(path=path, old=old, new=new)]
    return []


def diff_policies(old: CoopSchedulingPolicy | Mapping[str, Any] | None,
                  new: CoopSchedulingPolicy | Mapping[str, Any] | None) -> PolicyDiff:
    """The difference from ``old`` to ``new`` (either may be None: nothing).

    Raises ``pydantic.ValidationError`` for a dict that is not a valid policy.
    """
    a, b = _normalise(old), _normalise(new)
    rules_a = Counter(_canon(r) for r in a.get("rules", []))
    rules_b = Counter(_canon(r) for r in b.get("rules", []))
    added = sorted((rules_b - rules_a).elements())
    removed = sorted((rules_a - rules_b).elements())

    qa: dict[str, Any] = a.get("member_quotas", {})
    qb: dict[str, Any] = b.get("member_quotas", {})
    q_added = [QuotaChange(member=m, old=None, new=qb[m]) for m in sorted(set(qb) - set(qa))]
    q_removed = [QuotaChange(member=m, old=qa[m], new=None) for m in sorted(set(qa) - set(qb))]
    q_changed = []
    for m in sorted(set(qa) & set(qb)):
        changes = _field_changes(qa[m], qb[m], "")
        if changes:
            q_changed.append(QuotaChange(member=m, old=qa[m], new=qb[m], fields=tuple(changes)))

    rest_a = {k: v for k, v in a.items() if k not in ("rules", "member_quotas")}
    rest_b = {k: v for k, v in b.items() if k not in ("rules", "member_quotas")}
    return PolicyDiff(
        fields=tuple(_field_changes(rest_a, rest_b, "")),
        rules_added=tuple(added),
        rules_removed=tuple(removed),
        quotas_added=tuple(q_added),
        quotas_removed=tuple(q_removed),
        quotas_changed=tuple(q_changed),
    )
