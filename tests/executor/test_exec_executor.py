"""The executor end to end: request -> queue -> wasmtime -> signed receipt."""

from __future__ import annotations

import hashlib

import pytest
import trio
from pydantic import ValidationError

from icn_p2p.core.clock import FakeClock
from icn_p2p.core.enums import TaskPriority
from icn_p2p.core.receipt import Outcome
from icn_p2p.executor import ExecutionRequest, Executor, ExecutorQueue, JobState
from icn_p2p.executor.receipts import result_digest, verify_receipt
from icn_p2p.identity.keys import NodeKey
from icn_p2p.metrics import REGISTRY

from . import wat

KEY = NodeKey(bytes([7]) * 32)


def request(**over) -> ExecutionRequest:
    base = dict(
        task_id="t-1", task_hash="0f" * 32, coop_id="coop-a", member="did:icn:alice",
        module=wat.ADD, entry="add", args=[20, 22], fuel_limit=100_000,
    )
    base.update(over)
    return ExecutionRequest(**base)


@pytest.fixture
async def executor():
    q = ExecutorQueue(2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(q.run)
        yield Executor(KEY, q, memory_limit_bytes=1 << 20, wall_ms=2_000, clock=FakeClock(1_700_000_000_000))
        nursery.cancel_scope.cancel()


async def test_execute_returns_result_and_verifiable_receipt(executor):
    before = REGISTRY.get_sample_value("icn_executor_runs_total", {"outcome": "completed"}) or 0
    result, receipt = await executor.execute(request())
    assert result.values == [42]
    assert receipt.outcome is Outcome.COMPLETED
    assert receipt.executor == KEY.did == executor.did
    assert (receipt.task_id, receipt.task_hash, receipt.coop_id, receipt.member) == (
        "t-1", "0f" * 32, "coop-a", "did:icn:alice")
    assert receipt.fuel_used == result.fuel_used > 0
    assert receipt.cpu_ms >= 0 and receipt.wall_ms >= 1
    assert receipt.completed_at_ms == 1_700_000_000_000
    assert receipt.result_digest == result_digest([42])
    assert verify_receipt(receipt)
    after = REGISTRY.get_sample_value("icn_executor_runs_total", {"outcome": "completed"})
    assert after == before + 1


async def test_failures_get_signed_receipts_too(executor):
    result, receipt = await executor.execute(request(module=wat.LOOP_FOREVER, entry="spin", args=[], fuel_limit=5_000))
    assert result.outcome is Outcome.OUT_OF_FUEL and receipt.outcome is Outcome.OUT_OF_FUEL
    assert receipt.fuel_used == 5_000 and verify_receipt(receipt)
    _, receipt = await executor.execute(request(module=b"junk"))
    assert receipt.outcome is Outcome.INVALID_MODULE and receipt.fuel_used == 0
    assert receipt.result_digest == result_digest([])


async def test_executor_limits_cap_the_request(executor):
    job = executor.job_for(request(memory_limit_bytes=1 << 30, wall_ms=60_000))
    assert job.memory_limit_bytes == 1 << 20 and job.wall_ms == 2_000
    job = executor.job_for(request(memory_limit_bytes=65536, wall_ms=5, priority="High", adjusted_priority="Critical"))
    assert job.memory_limit_bytes == 65536 and job.wall_ms == 5
    assert job.priority is TaskPriority.HIGH and job.effective_priority is TaskPriority.CRITICAL
    default = executor.job_for(request())
    assert default.memory_limit_bytes == 1 << 20 and default.wall_ms == 2_000


async def test_memory_limit_from_executor_default(executor):
    result, receipt = await executor.execute(request(module=wat.GROW_UNTIL_REFUSED, entry="grow", args=[]))
    assert result.outcome is Outcome.MEMORY_LIMIT and result.memory_bytes == 1 << 20
    assert receipt.outcome is Outcome.MEMORY_LIMIT


async def test_module_hash_checked_before_queueing(executor):
    good = hashlib.sha256(wat.ADD.encode()).hexdigest()
    result, _ = await executor.execute(request(module_hash=good))
    assert result.values == [42]
    result, receipt = await executor.execute(request(module_hash="00" * 32))
    assert result.outcome is Outcome.INVALID_MODULE and "module_hash" in result.error
    assert verify_receipt(receipt) and executor.queue.queue_depth == 0


async def test_cancel_through_submit_and_finish(executor):
    req = request(module=wat.LOOP_FOREVER, entry="spin", args=[], fuel_limit=10**18)
    handle = executor.submit(req)
    with trio.fail_after(5):
        while handle.state is not JobState.RUNNING:
            await trio.sleep(0.001)
        handle.cancel()
        result, receipt = await executor.finish(req, handle)
    assert result.outcome is Outcome.CANCELLED and receipt.outcome is Outcome.CANCELLED
    assert verify_receipt(receipt)


@pytest.mark.parametrize(
    "change",
    [{"task_hash": "nothex"}, {"fuel_limit": -1}, {"args": ["1"]}, {"priority": "Urgent"},
     {"unknown": 1}, {"task_id": ""}, {"args": [True]}],
)
def test_malformed_request_is_rejected(change):
    with pytest.raises(ValidationError):
        request(**change)
