"""What admission decides: constraints, violations and the decision itself."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .enums import EnforcementMode, TaskPriority


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CapabilityRequirement(_Model):
    capability: str
    min_version: str | None = None


class PlacementConstraints(_Model):
    """Hard filters on executors, gathered from a policy's placement rules.

    Several rules of one kind all hold at once. When they contradict each other
    (two different required regions, whitelists with nothing in common)
    ``conflicts`` says so and no executor is feasible.
    """

    required_region: str | None = None
    allowed_executors: list[str] = Field(default_factory=list)
    forbidden_executors: list[str] = Field(default_factory=list)
    required_capabilities: list[CapabilityRequirement] = Field(default_factory=list)
    conflicts: list[str] = Field(default_factory=list)

    @property
    def satisfiable(self) -> bool:
        return not self.conflicts


class Violation(_Model):
    """One rule or quota the task breaks, with the numbers and the way out."""

    rule: str
    reason: str
    member: str | None = None
    observed: Any = None
    limit: Any = None
    remedy: str | None = None


class PolicyDecision(_Model):
    """The outcome of admission. ``violations`` lists every broken rule, not only the first."""

    decision: Literal["allow", "reject"]
    adjusted_priority: TaskPriority
    submitted_priority: TaskPriority
    constraints: PlacementConstraints = Field(default_factory=PlacementConstraints)
    violations: list[Violation] = Field(default_factory=list)
    enforcement_mode: EnforcementMode = EnforcementMode.STRICT
    coop_id: str
    member: str
    evaluated_at_ms: int
    policy_hash: str | None = None

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"

    def summary(self) -> str:
        if not self.violations:
            return "allowed"
        return "; ".join(v.reason for v in self.violations)
