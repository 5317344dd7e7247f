"""A cooperative's scheduling policy, in ICN's file format.

ICN wrote these with serde: rules are externally tagged
(``{"DataSovereignty": {"region": ..., "tags": [...]}}``), enums are their
Rust names, and absent optional fields take the defaults listed in DESIGN.md.
A file written for ICN loads here unchanged and ``to_icn_json`` writes back an
equivalent document.

Validation is strict: a value of the wrong type is an error, never coerced
(``"5"`` is not ``5``), and an error's location is the JSON path of the bad
field (``rules.0.TimeWindow.allowed_hours.2``).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    field_validator,
    model_serializer,
)

from .enums import EnforcementMode, TaskPriority

U8_HOUR = Annotated[int, Field(ge=0, le=23)]
U8_DAY = Annotated[int, Field(ge=0, le=6)]
U32 = Annotated[int, Field(ge=0, le=2**32 - 1)]
U64 = Annotated[int, Field(ge=0, le=2**64 - 1)]
# Enums arrive as strings from JSON and CBOR alike; lax mode on these fields
# only maps a known name to its member and refuses anything else.
Priority = Annotated[TaskPriority, Strict(False)]
Mode = Annotated[EnforcementMode, Strict(False)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number")
    return value


class _Rule(_Strict):
    """Base of every rule: serialises externally tagged, as serde did."""

    kind: str = Field(exclude=True)

    @model_serializer(mode="wrap")
    def _tagged(self, handler: Any) -> dict[str, Any]:
        body = handler(self)
        body.pop("kind", None)
        return {self.kind: body}


class DataSovereignty(_Rule):
    """Tasks carrying one of ``tags`` (every task when ``tags`` is empty) run only in ``region``."""

    kind: Literal["DataSovereignty"] = Field("DataSovereignty", exclude=True)
    region: Annotated[str, Field(min_length=1)]
    tags: list[str] = Field(default_factory=list)

    def applies_to(self, task_tags: list[str] | tuple[str, ...]) -> bool:
        return not self.tags or any(t in self.tags for t in task_tags)


class TimeWindow(_Rule):
    """Tasks of the listed priorities may be submitted only in these UTC hours and weekdays."""

    kind: Literal["TimeWindow"] = Field("TimeWindow", exclude=True)
    allowed_hours: list[U8_HOUR]
    allowed_days: list[U8_DAY]
    priorities: list[Priority]


class MemberPriority(_Rule):
    """Multiply a member's task priority (2.0 doubles, 0.5 halves) once admitted."""

    kind: Literal["MemberPriority"] = Field("MemberPriority", exclude=True)
    member: Annotated[str, Field(min_length=1)]
    multiplier: float

    @field_validator("multiplier")
    @classmethod
    def _positive(cls, v: float) -> float:
        _finite(v, "multiplier")
        if v <= 0:
            raise ValueError("multiplier must be greater than 0")
        return v


class RequireCapability(_Rule):
    """Executors must advertise ``capability`` at ``min_version`` or later."""

    kind: Literal["RequireCapability"] = Field("RequireCapability", exclude=True)
    capability: Annotated[str, Field(min_length=1)]
    min_version: str | None = None

    @field_validator("min_version")
    @classmethod
    def _version(cls, v: str | None) -> str | None:
        if v is not None:
            from .versions import parse_version

            parse_version(v)
        return v


class ExecutorFilter(_Rule):
    """Only whitelisted executors (when the list is non-empty), never blacklisted ones."""

    kind: Literal["ExecutorFilter"] = Field("ExecutorFilter", exclude=True)
    whitelist: list[str] = Field(default_factory=list)
    blacklist: list[str] = Field(default_factory=list)


RULE_KINDS = ("DataSovereignty", "TimeWindow", "MemberPriority", "RequireCapability", "ExecutorFilter")

_RuleUnion = Annotated[
    Union[
        Annotated[DataSovereignty, Tag("DataSovereignty")],
        Annotated[TimeWindow, Tag("TimeWindow")],
        Annotated[MemberPriority, Tag("MemberPriority")],
        Annotated[RequireCapability, Tag("RequireCapability")],
        Annotated[ExecutorFilter, Tag("ExecutorFilter")],
    ],
    Discriminator("kind"),
]


def _untag_rule(raw: Any) -> Any:
    """``{"Name": {...}}`` -> ``{"kind": "Name", ...}`` so the union can dispatch on it."""
    if isinstance(raw, _Rule):
        return raw
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ValueError(
            "a rule is an object with exactly one key, the rule type "
            f"(one of {', '.join(RULE_KINDS)})"
        )
    (name, body), = raw.items()
    if name not in RULE_KINDS:
        raise ValueError(f"unknown rule type {name!r} (expected one of {', '.join(RULE_KINDS)})")
    if not isinstance(body, dict):
        raise ValueError(f"the body of a {name} rule must be an object")
    if "kind" in body:
        raise ValueError(f"{name} has no field 'kind'")
    return {**body, "kind": name}


SchedulingRule = Annotated[_RuleUnion, BeforeValidator(_untag_rule)]


class MemberQuota(_Strict):
    """What one member may use in a calendar month (UTC)."""

    cpu_hours_per_month: float = Field(ge=0)
    max_concurrent_tasks: U32
    max_priority: Priority
    credits_per_month: U64 | None = None

    @field_validator("cpu_hours_per_month")
    @classmethod
    def _finite_hours(cls, v: float) -> float:
        return _finite(v, "cpu_hours_per_month")


class CoopSchedulingPolicy(_Strict):
    """One cooperative's rules, quotas and enforcement mode."""

    coop_id: Annotated[str, Field(min_length=1, max_length=256)]
    governance_domain: str | None = None
    rules: list[SchedulingRule] = Field(default_factory=list)
    member_quotas: dict[str, MemberQuota] = Field(default_factory=dict)
    default_quota: MemberQuota
    enforcement_mode: Mode = EnforcementMode.STRICT

    def quota_for(self, member: str) -> MemberQuota:
        """A member's own quota replaces the default."""
        return self.member_quotas.get(member, self.default_quota)

    # --- serialisation ---------------------------------------------------

    def to_icn_dict(self) -> dict[str, Any]:
        """The policy as ICN's serde would have written it (every field present)."""
        return self.model_dump(mode="json")

    def to_icn_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_icn_dict(), indent=indent)

    def canonical_bytes(self) -> bytes:
        """Stable bytes for hashing and signing: sorted keys, no whitespace."""
        return json.dumps(self.to_icn_dict(), sort_keys=True, separators=(",", ":")).encode()

    def content_hash(self) -> str:
        """Hex SHA-256 of ``canonical_bytes``: the policy version's identity."""
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    @classmethod
    def from_json(cls, text: str | bytes) -> "CoopSchedulingPolicy":
        return cls.model_validate_json(text)

    @classmethod
    def from_dict(cls, data: Any) -> "CoopSchedulingPolicy":
        return cls.model_validate(data)
