"""The executor: runs a claimed task's module in the queue and signs a receipt.

Every request ends in a signed receipt, including those that never ran
(``invalid_module``, ``no_entry``...), so the submitter always learns why.
CPU and wall time on the receipt are whole milliseconds rounded up: a run that
used any time is charged at least one millisecond.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Annotated

from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field, Strict

from icn_p2p.core.clock import Clock, SystemClock
from icn_p2p.core.enums import TaskPriority
from icn_p2p.core.receipt import Outcome, Receipt
from icn_p2p.identity.keys import NodeKey
from icn_p2p.metrics import REGISTRY

from .queue import DEFAULT_MEMORY_LIMIT_BYTES, DEFAULT_WALL_MS, ExecutorQueue, Job, JobHandle
from .receipts import result_digest, sign_receipt
from .wasm import ExecutionResult

log = logging.getLogger(__name__)

RUNS = Counter("icn_executor_runs", "Task runs finished on this executor, by outcome", ["outcome"], registry=REGISTRY)
FUEL_USED = Counter("icn_executor_fuel_used", "Fuel consumed by task runs on this executor", registry=REGISTRY)
RUN_SECONDS = Histogram(
    "icn_executor_run_seconds", "Wall-clock time of one task run (compilation excluded)",
    buckets=(1e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30), registry=REGISTRY,
)

_Priority = Annotated[TaskPriority, Strict(False)]
_Text = Annotated[str, Field(min_length=1, max_length=512)]
_Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ExecutionRequest(BaseModel):
    """A claimed task as the executor needs it: identity, code, call and limits."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    task_id: _Text
    task_hash: _Hex64
    coop_id: _Text
    member: _Text
    module: bytes | str
    module_hash: _Hex64 | None = None
    entry: _Text = "main"
    args: list[int | float] = Field(default_factory=list, max_length=1024)
    fuel_limit: int = Field(ge=0, le=2**64 - 1)
    priority: _Priority = TaskPriority.NORMAL
    adjusted_priority: _Priority | None = None
    memory_limit_bytes: int | None = Field(default=None, ge=0)
    wall_ms: int | None = Field(default=None, ge=0)


class Executor:
    """Runs requests through an ``ExecutorQueue`` and signs their receipts as ``key``."""

    def __init__(
        self,
        key: NodeKey,
        queue: ExecutorQueue,
        *,
        memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
        wall_ms: int = DEFAULT_WALL_MS,
        clock: Clock | None = None,
    ) -> None:
        self.key = key
        self.queue = queue
        self.memory_limit_bytes = memory_limit_bytes
        self.wall_ms = wall_ms
        self.clock = clock or SystemClock()

    @property
    def did(self) -> str:
        return self.key.did

    def job_for(self, req: ExecutionRequest) -> Job:
        return Job(
            module=req.module,
            entry=req.entry,
            args=tuple(req.args),
            fuel=req.fuel_limit,
            memory_limit_bytes=(
                self.memory_limit_bytes if req.memory_limit_bytes is None
                else min(req.memory_limit_bytes, self.memory_limit_bytes)
            ),
            wall_ms=self.wall_ms if req.wall_ms is None else min(req.wall_ms, self.wall_ms),
            priority=req.priority,
            adjusted_priority=req.adjusted_priority,
            label=req.task_id,
        )

    def submit(self, req: ExecutionRequest) -> JobHandle | ExecutionResult:
        """Queue the request's run, or return at once the result of a module that fails its hash."""
        if req.module_hash is not None:
            raw = req.module.encode() if isinstance(req.module, str) else req.module
            if hashlib.sha256(raw).hexdigest() != req.module_hash:
                return ExecutionResult(outcome=Outcome.INVALID_MODULE, error="module does not match module_hash")
        return self.queue.submit(self.job_for(req))

    async def finish(self, req: ExecutionRequest, started: JobHandle | ExecutionResult) -> tuple[ExecutionResult, Receipt]:
        """Wait for a submitted run and sign its receipt."""
        result = started if isinstance(started, ExecutionResult) else await started.wait()
        return result, self.receipt_for(req, result)

    async def execute(self, req: ExecutionRequest) -> tuple[ExecutionResult, Receipt]:
        """Run ``req`` to the end (any outcome) and return the result with its signed receipt."""
        return await self.finish(req, self.submit(req))

    def receipt_for(self, req: ExecutionRequest, result: ExecutionResult) -> Receipt:
        RUNS.labels(result.outcome.value).inc()
        if result.fuel_used:
            FUEL_USED.inc(result.fuel_used)
        if result.outcome.ran:
            RUN_SECONDS.observe(result.wall_ms / 1000)
        log.info(
            "task run task=%s coop=%s outcome=%s fuel_used=%d cpu_ms=%.3f wall_ms=%.3f",
            req.task_id, req.coop_id, result.outcome.value, result.fuel_used, result.cpu_ms, result.wall_ms,
        )
        return sign_receipt(
            self.key,
            task_id=req.task_id,
            task_hash=req.task_hash,
            coop_id=req.coop_id,
            member=req.member,
            outcome=result.outcome,
            fuel_used=result.fuel_used,
            cpu_ms=math.ceil(result.cpu_ms),
            wall_ms=math.ceil(result.wall_ms),
            completed_at_ms=self.clock.now_ms(),
            result_digest=result_digest(result.values),
        )
