"""Task execution: the WebAssembly sandbox, the run queue and signed receipts."""

from .executor import ExecutionRequest, Executor
from .queue import ExecutorQueue, Job, JobHandle, JobState, QueueFull
from .receipts import result_digest, sign_receipt, verify_receipt
from .wasm import ExecutionResult, RunControl, run_module

__all__ = [
    "ExecutionRequest", "ExecutionResult", "Executor", "ExecutorQueue", "Job", "JobHandle",
    "JobState", "QueueFull", "RunControl", "result_digest", "run_module", "sign_receipt",
    "verify_receipt",
]
