"""A member's usage as admission reads it: one merged figure per counter."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MS_PER_HOUR = 3_600_000


class MemberUsage(BaseModel):
    """A member's usage in one coop for the current UTC month (merged across nodes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    coop_id: str = ""
    member: str = ""
    month: str = ""
    cpu_hours_this_month: float = Field(default=0.0, ge=0)
    concurrent_tasks: int = Field(default=0, ge=0)
    tasks_completed_this_month: int = Field(default=0, ge=0)
    credits_spent_this_month: int = Field(default=0, ge=0)
    fuel_this_month: int = Field(default=0, ge=0)

    @classmethod
    def from_counters(
        cls,
        *,
        coop_id: str,
        member: str,
        month: str,
        cpu_ms: int,
        fuel: int,
        tasks_completed: int,
        credits_spent: int,
        concurrent: int,
    ) -> "MemberUsage":
        return cls(
            coop_id=coop_id,
            member=member,
            month=month,
            cpu_hours_this_month=cpu_ms / MS_PER_HOUR,
            concurrent_tasks=max(0, concurrent),
            tasks_completed_this_month=tasks_completed,
            credits_spent_this_month=credits_spent,
            fuel_this_month=fuel,
        )
