"""Tasks and executors as the scheduler sees them."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .enums import ScopeLevel, TaskPriority
from .policy import Priority, U64
from .versions import parse_version

Scope = Annotated[ScopeLevel, Field(strict=False)]
NonEmpty = Annotated[str, Field(min_length=1, max_length=512)]

DEFAULT_FUEL_LIMIT = 10_000_000


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class LocalityHints(_Model):
    """Soft preferences, except ``avoid_executors``, which is a hard exclusion."""

    preferred_region: str | None = None
    preferred_executors: list[str] = Field(default_factory=list)
    avoid_executors: list[str] = Field(default_factory=list)


class ResourceProfile(_Model):
    """What the task needs from an executor's free capacity."""

    cpu_cores: float = Field(default=1.0, gt=0, le=1024)
    memory_mb: int = Field(default=64, gt=0, le=1 << 24)


class ComputeTask(_Model):
    """A unit of work a member submits to their coop."""

    id: NonEmpty
    coop_id: NonEmpty
    submitter: NonEmpty
    priority: Priority = TaskPriority.NORMAL
    scope: Scope = ScopeLevel.LOCAL
    tags: list[str] = Field(default_factory=list)
    fuel_limit: U64 = DEFAULT_FUEL_LIMIT
    input_blobs: list[str] = Field(default_factory=list)
    locality_hints: LocalityHints = Field(default_factory=LocalityHints)
    resource_profile: ResourceProfile = Field(default_factory=ResourceProfile)
    deadline_ms: U64 | None = None
    # What to run: the module is named by its hash; its bytes travel beside the task.
    module_hash: str | None = None
    entry: str = "main"
    args: list[int | float] = Field(default_factory=list)

    def task_hash(self) -> str:
        """Hex SHA-256 of the task's canonical JSON: what receipts and claims name."""
        raw = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(raw.encode()).hexdigest()


class Capacity(_Model):
    """An executor's free share of CPU and memory, each in [0, 1]."""

    cpu_free: float = Field(default=1.0, ge=0, le=1)
    memory_free: float = Field(default=1.0, ge=0, le=1)
    cpu_cores: float = Field(default=1.0, ge=0)
    memory_mb: int = Field(default=1024, ge=0)


class ExecutorInfo(_Model):
    """What an executor says of itself when it offers to run a task."""

    did: NonEmpty
    region: str | None = None
    capabilities: dict[str, str] = Field(default_factory=dict)
    trust: float = Field(default=0.5, ge=0, le=1)
    capacity: Capacity = Field(default_factory=Capacity)
    queue_depth: int = Field(default=0, ge=0)
    blobs: list[str] = Field(default_factory=list)

    @field_validator("capabilities")
    @classmethod
    def _versions(cls, v: dict[str, str]) -> dict[str, str]:
        for name, version in v.items():
            try:
                parse_version(version)
            except ValueError as e:
                raise ValueError(f"capability {name!r}: {e}") from None
        return v


def looks_like_module(raw: bytes) -> bool:
    """A WebAssembly binary (``\\0asm``) or WAT text (``(module``, after blank lines and ``;;`` comments).

    A cheap check at the edges, so a user who sends the wrong file hears it at
    once; the sandbox still validates the module fully before running it.
    """
    if raw[:4] == b"\0asm":
        return True
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(";;"):
            continue
        return line.startswith("(module")
    return False


def task_from_json_dict(data: Any) -> ComputeTask:
    return ComputeTask.model_validate(data)
