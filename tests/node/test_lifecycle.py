import pytest

from icn_p2p.node.lifecycle import FINAL_STATES, TaskRecord, TaskState, TransitionError, can_move
from icn_p2p.node.task_store import TaskStore

S = TaskState


def _record(state=S.SUBMITTED, task_id="t1", at=1000):
    return TaskRecord(task_id=task_id, coop_id="c", submitter="did:icn:a", state=state,
                      task={"id": task_id}, created_at_ms=at, updated_at_ms=at)


def test_happy_path_keeps_every_step():
    r = _record()
    for state in (S.ADMITTED, S.PLACED, S.RUNNING, S.COMPLETED):
        r = r.moved(state, r.updated_at_ms + 1, reason=f"to {state}")
    assert r.state is S.COMPLETED
    assert [e.state for e in r.events] == [S.ADMITTED, S.PLACED, S.RUNNING, S.COMPLETED]
    assert r.reason == "to completed"


@pytest.mark.parametrize("final", sorted(FINAL_STATES, key=lambda s: s.value))
def test_final_states_never_move(final):
    assert final.final
    for other in TaskState:
        assert not can_move(final, other)


def test_a_late_result_cannot_move_a_cancelled_task():
    r = _record().moved(S.ADMITTED, 2).moved(S.PLACED, 3).moved(S.CANCELLED, 4, reason="by submitter")
    with pytest.raises(TransitionError, match="cancelled to completed"):
        r.moved(S.COMPLETED, 5)


def test_placed_again_after_executor_vanishes():
    r = _record().moved(S.ADMITTED, 2).moved(S.PLACED, 3, executor="did:key:x", attempts=1)
    r = r.moved(S.ADMITTED, 4, reason="executor vanished", excluded_executors=["did:key:x"])
    assert r.state is S.ADMITTED and r.attempts == 1 and r.excluded_executors == ["did:key:x"]
    assert not S.ADMITTED.final


def test_store_round_trip_and_reopen(tmp_path):
    path = tmp_path / "tasks.db"
    store = TaskStore(path)
    a = _record(task_id="a").moved(S.ADMITTED, 2000)
    b = _record(task_id="b").moved(S.REJECTED, 3000, reason="quota")
    store.save(a)
    store.save(b)
    store.save(a.moved(S.WAITING, 4000, waiting_for=["no executor in eu-central"]))
    store.close()

    store = TaskStore(path)
    got = store.get("a")
    assert got.state is S.WAITING and got.waiting_for == ["no executor in eu-central"]
    assert [r.task_id for r in store.unfinished()] == ["a"]
    assert store.counts() == {"waiting": 1, "rejected": 1}
    assert [r.task_id for r in store.list(coop_id="c")] == ["a", "b"]
    assert [r.task_id for r in store.list(state=S.REJECTED)] == ["b"]
    assert store.get("missing") is None
    store.close()


def test_store_refuses_a_newer_schema(tmp_path):
    import sqlite3

    path = tmp_path / "tasks.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(RuntimeError, match="newer"):
        TaskStore(path)
