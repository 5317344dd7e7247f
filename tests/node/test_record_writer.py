"""Task records written behind the lifecycle: a real SQLite store in a temp dir."""

import trio

from icn_p2p.node.lifecycle import TaskRecord, TaskState
from icn_p2p.node.record_writer import RecordWriter
from icn_p2p.node.task_store import TaskStore

S = TaskState


def _record(task_id="t1", at=1000):
    return TaskRecord(task_id=task_id, coop_id="c", submitter="did:icn:a", state=S.SUBMITTED,
                      task={"id": task_id}, created_at_ms=at, updated_at_ms=at)


def _run(fn, *args):
    return trio.to_thread.run_sync(fn, *args)


async def test_queued_records_are_written_in_batches_and_the_newest_wins(tmp_path):
    store = TaskStore(tmp_path / "tasks.db")
    calls = []
    original = store.save_many
    store.save_many = lambda records: (calls.append(len(records)), original(records))[1]
    writer = RecordWriter(store, _run)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        r = _record()
        writer.put(r)
        writer.put(placed := r.moved(S.ADMITTED, 1001).moved(S.PLACED, 1002))
        for i in range(2, 6):
            writer.put(_record(f"t{i}"))
        await writer.save(done := placed.moved(S.RUNNING, 1003).moved(S.COMPLETED, 1004))
        assert store.get("t1").state is S.COMPLETED
        assert store.get("t1").events == done.events
        assert {store.get(f"t{i}").state for i in range(2, 6)} == {S.SUBMITTED}
        assert sum(calls) == 5 and len(calls) == 1  # seven changes of five tasks, one transaction
        await writer.flush()  # nothing queued: returns at once
        nursery.cancel_scope.cancel()
    store.close()


async def test_a_failed_write_is_retried_and_keeps_newer_records(tmp_path, autojump_clock):
    store = TaskStore(tmp_path / "tasks.db")
    original = store.save_many
    failures = [OSError("disk full")]

    def flaky(records):
        if failures:
            raise failures.pop()
        original(records)

    store.save_many = flaky
    writer = RecordWriter(store, _run)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        r = _record()
        async with trio.open_nursery() as savers:
            savers.start_soon(writer.save, r)
            await trio.sleep(0.5)  # the first write failed; a newer state arrives meanwhile
            savers.start_soon(writer.save, r.moved(S.ADMITTED, 1001))
        assert store.get("t1").state is S.ADMITTED
        nursery.cancel_scope.cancel()
    store.close()


async def test_drain_writes_what_is_still_queued_at_stop(tmp_path):
    store = TaskStore(tmp_path / "tasks.db")
    writer = RecordWriter(store, _run)
    writer.put(_record("t9"))  # the writer never ran (the node stopped first)
    await trio.to_thread.run_sync(writer.drain)
    assert store.get("t9").state is S.SUBMITTED
    store.close()
    reopened = TaskStore(tmp_path / "tasks.db")
    assert reopened.get("t9") is not None
    reopened.close()


def test_a_final_record_is_never_written_over(tmp_path):
    # the finished task's own commit can overtake a writer batch that left with an older state
    store = TaskStore(tmp_path / "tasks.db")
    r = _record()
    placed = r.moved(S.ADMITTED, 1001).moved(S.PLACED, 1002)
    done = placed.moved(S.RUNNING, 1003).moved(S.COMPLETED, 1004)
    store.save_many([done])
    store.save_many([placed, _record("t2")])
    assert store.get("t1").state is S.COMPLETED and store.get("t1").events == done.events
    assert store.get("t2").state is S.SUBMITTED
    store.save_many([_record("t2").moved(S.REJECTED, 1001, reason="quota")])
    store.save_many([_record("t2").moved(S.ADMITTED, 1002)])
    assert store.get("t2").state is S.REJECTED


async def test_a_forgotten_record_is_not_written(tmp_path):
    store = TaskStore(tmp_path / "tasks.db")
    writer = RecordWriter(store, _run)
    writer.put(_record("t1"))
    writer.put(_record("t2"))
    writer.forget("t1")  # its final record is committed elsewhere
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await writer.flush()
        nursery.cancel_scope.cancel()
    assert store.get("t1") is None and store.get("t2").state is S.SUBMITTED
