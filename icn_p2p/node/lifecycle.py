"""The task lifecycle as a state machine, kept on the submitting node.

    submitted -> admitted | rejected
    admitted  -> placed | waiting | cancelled | expired
    waiting   -> placed | cancelled | expired           (no feasible executor yet)
    placed    -> running | admitted | failed | cancelled | expired   (admitted = placed again)
    running   -> completed | failed | admitted | cancelled | expired

``rejected``, ``completed``, ``failed``, ``cancelled`` and ``expired`` are final.
A transition that the table does not allow is refused, so a late or duplicated
message (a second result, a claim for a finished task) cannot move a task
backwards.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TaskState(str, Enum):
    SUBMITTED = "submitted"
    ADMITTED = "admitted"
    REJECTED = "rejected"
    WAITING = "waiting"
    PLACED = "placed"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES

    def __str__(self) -> str:
        return self.value


FINAL_STATES = frozenset(
    {TaskState.REJECTED, TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED, TaskState.EXPIRED}
)

_S = TaskState
TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    _S.SUBMITTED: frozenset({_S.ADMITTED, _S.REJECTED}),
    _S.ADMITTED: frozenset({_S.PLACED, _S.WAITING, _S.CANCELLED, _S.EXPIRED, _S.FAILED}),
    _S.WAITING: frozenset({_S.PLACED, _S.CANCELLED, _S.EXPIRED, _S.ADMITTED}),
    _S.PLACED: frozenset({_S.RUNNING, _S.ADMITTED, _S.FAILED, _S.CANCELLED, _S.EXPIRED, _S.COMPLETED}),
    _S.RUNNING: frozenset({_S.COMPLETED, _S.FAILED, _S.ADMITTED, _S.CANCELLED, _S.EXPIRED}),
}


class TransitionError(ValueError):
    def __init__(self, task_id: str, current: TaskState, wanted: TaskState) -> None:
        super().__init__(f"task {task_id} cannot go from {current} to {wanted}")
        self.current = current
        self.wanted = wanted


def can_move(current: TaskState, wanted: TaskState) -> bool:
    return wanted in TRANSITIONS.get(current, frozenset())


class TaskEvent(BaseModel):
    """One step in a task's history: what happened, when, and why."""

    model_config = ConfigDict(frozen=True)

    state: TaskState
    at_ms: int
    reason: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class TaskRecord(BaseModel):
    """Everything the submitter knows about one task."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    coop_id: str
    submitter: str
    state: TaskState
    task: dict[str, Any]
    policy_hash: str | None = None
    policy_version: int | None = None
    adjusted_priority: str | None = None
    decision: dict[str, Any] | None = None
    executor: str | None = None
    attempts: int = 0
    excluded_executors: list[str] = Field(default_factory=list)
    waiting_for: list[str] = Field(default_factory=list)
    placement: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    receipt: dict[str, Any] | None = None
    reason: str | None = None
    created_at_ms: int
    updated_at_ms: int
    events: list[TaskEvent] = Field(default_factory=list)

    def moved(self, state: TaskState, at_ms: int, *, reason: str | None = None,
              detail: dict[str, Any] | None = None, **changes: Any) -> "TaskRecord":
        """The record after a transition; refuses one the table does not allow."""
        if not can_move(self.state, state):
            raise TransitionError(self.task_id, self.state, state)
        event = TaskEvent(state=state, at_ms=at_ms, reason=reason, detail=detail or {})
        return self.model_copy(update={
            "state": state, "updated_at_ms": at_ms, "events": [*self.events, event],
            "reason": reason if reason is not None else self.reason, **changes,
        })
