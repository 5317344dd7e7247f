import pytest

from icn_p2p.core.clock import FakeClock
from icn_p2p.identity.keys import NodeKey
from icn_p2p.wire import MAX_SEQ, FloorStore, Reason, ReplayGuard, Sealer, WireError, open_envelope

KEY = NodeKey(b"\x07" * 32)


class MicroClock:
    def __init__(self, us: int) -> None:
        self.us = us

    def __call__(self) -> int:
        return self.us


def test_seq_strictly_increases_even_when_the_clock_stands_still():
    clock = MicroClock(1_000_000)
    s = Sealer(KEY, now_us=clock)
    seqs = [open_envelope(s.seal("t", i)).seq for i in range(5)]
    assert seqs == [1_000_000, 1_000_001, 1_000_002, 1_000_003, 1_000_004]
    clock.us = 2_000_000
    env = open_envelope(s.seal("t", None))
    assert env.seq == 2_000_000 and env.ts == 2_000 and env.signer == KEY.did == s.did
    assert s.last_seq == 2_000_000


def test_fake_clock_gives_ts_in_ms_and_seq_in_us():
    s = Sealer(KEY, clock=FakeClock(1_700_000_000_000))
    env = open_envelope(s.seal("policy.act", {"v": 1}))
    assert env.ts == 1_700_000_000_000 and env.seq == 1_700_000_000_000_000


def test_system_clock_by_default():
    env = open_envelope(Sealer(KEY).seal("t", None))
    assert abs(env.seq // 1000 - env.ts) < 5_000


def test_monotonic_across_a_simulated_restart(tmp_path):
    """A restarted sealer (new object, no persisted seq) stays above everything sent before."""
    clock = MicroClock(5_000_000)
    store = FloorStore(tmp_path / "floors.db")
    guard = ReplayGuard(floor_store=store)
    first = Sealer(KEY, now_us=clock)
    burst = [open_envelope(first.seal("t", i)) for i in range(1_000)]  # faster than the clock
    assert all(guard.accept(e, 5_000) is None for e in burst)
    guard.flush()

    clock.us += 1_000_100  # the process restarts a second later
    restarted = Sealer(KEY, now_us=clock)
    env = open_envelope(restarted.seal("t", "after"))
    assert env.seq > burst[-1].seq
    receiver = ReplayGuard(floor_store=store)  # the receiver restarted too
    assert receiver.accept(env, 6_000) is None
    assert receiver.accept(burst[-1], 6_000) == Reason.REPLAY
    store.close()


def test_failed_seal_does_not_use_up_the_seq():
    s = Sealer(KEY, now_us=MicroClock(10))
    with pytest.raises(WireError):
        s.seal("bad type!", None)
    assert s.last_seq == -1
    assert open_envelope(s.seal("t", None)).seq == 10


def test_seq_space_exhausted():
    s = Sealer(KEY, now_us=MicroClock(0), last_seq=MAX_SEQ - 1)
    with pytest.raises(WireError) as info:
        s.seal("t", None)
    assert info.value.reason == Reason.BAD_SCHEMA
