import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from icn_p2p.core.clock import FakeClock
from icn_p2p.scheduler.credits import (
    DEFAULT_FUEL_PER_CREDIT,
    CreditError,
    CreditLedger,
    CreditRate,
    InsufficientCredits,
    actual_cost,
    estimate_cost,
)

from .factories import task


@pytest.fixture
def ledger(tmp_path):
    with CreditLedger(tmp_path / "credits.db", clock=FakeClock(1_000)) as led:
        yield led


@pytest.mark.parametrize("fuel,rate,expected", [
    (10_000_000, CreditRate(), 10),
    (10_000_001, CreditRate(), 11),
    (1, CreditRate(), 1),
    (0, CreditRate(), 1),
    (999, CreditRate(fuel_per_credit=1000), 1),
    (2000, CreditRate(fuel_per_credit=1000), 2),
    (0, CreditRate(min_cost=0), 0),
    (0, CreditRate(min_cost=3), 3),
])
def test_cost(fuel, rate, expected):
    assert actual_cost(fuel, rate) == expected
    assert estimate_cost(task(fuel_limit=fuel), rate) == expected


def test_estimate_uses_fuel_limit():
    assert estimate_cost(task(fuel_limit=3 * DEFAULT_FUEL_PER_CREDIT)) == 3
    assert estimate_cost(task(fuel_limit=5000), CreditRate(fuel_per_credit=1000)) == 5
    with pytest.raises(ValueError):
        actual_cost(-1)


def test_reserve_settle_release(ledger):
    r = ledger.reserve("coop", "m", "t1", 5, balance=10)
    assert (r.state, r.amount, r.created_ms) == ("reserved", 5, 1_000)
    ledger.reserve("coop", "m", "t2", 3, balance=10)
    assert ledger.outstanding("coop", "m") == 8
    assert ledger.outstanding("coop", "other") == 0
    assert ledger.settle("t1", 2, now_ms=2_000) == 2
    assert ledger.get("t1").state == "settled" and ledger.get("t1").settled_amount == 2
    assert ledger.get("t1").updated_ms == 2_000
    assert ledger.outstanding("coop", "m") == 3
    rel = ledger.release("t2")
    assert rel.state == "released" and rel.settled_amount is None
    assert ledger.outstanding("coop", "m") == 0
    assert ledger.open_reservations() == []


def test_insufficient_balance_has_a_clear_reason(ledger):
    ledger.reserve("coop", "m", "t1", 6, balance=10)
    with pytest.raises(InsufficientCredits) as e:
        ledger.reserve("coop", "m", "t2", 5, balance=10)
    assert e.value.code == "insufficient_commons_credits"
    assert (e.value.balance, e.value.outstanding, e.value.required, e.value.available) == (10, 6, 5, 4)
    assert str(e.value) == ("member m of coop has 4 commons credits available "
                            "(balance 10 - reserved 6) but the task needs 5")
    assert ledger.get("t2") is None
    assert ledger.reserve("coop", "m", "t2", 4, balance=10).amount == 4  # exactly what is left


def test_icn_floor_is_the_amount_one_case(ledger):
    with pytest.raises(InsufficientCredits):
        ledger.reserve("coop", "m", "t0", 1, balance=0)
    with pytest.raises(InsufficientCredits):
        ledger.reserve("coop", "m", "tneg", 1, balance=-3)
    assert ledger.reserve("coop", "m", "t1", 1, balance=1).state == "reserved"


def test_reserve_is_idempotent_by_task_id(ledger):
    a = ledger.reserve("coop", "m", "t1", 5, balance=5)
    b = ledger.reserve("coop", "m", "t1", 5, balance=5)  # would not fit twice
    assert a == b and ledger.outstanding("coop", "m") == 5
    assert ledger.reserve("coop", "m", "t1", 9, balance=0).amount == 5  # a retry, unchanged
    ledger.settle("t1", 4)
    assert ledger.reserve("coop", "m", "t1", 5, balance=5).state == "settled"
    with pytest.raises(CreditError) as e:
        ledger.reserve("coop", "someone-else", "t1", 5, balance=5)
    assert e.value.code == "task_id_conflict"


def test_settle_caps_at_reserved_and_repeats_are_stable(ledger):
    ledger.reserve("coop", "m", "t1", 5, balance=5)
    assert ledger.settle("t1", 8) == 5
    assert ledger.settle("t1", 1) == 5  # a repeated settle returns the first outcome
    with pytest.raises(CreditError) as e:
        ledger.release("t1")
    assert e.value.code == "already_settled"


def test_release_is_repeatable_and_final(ledger):
    ledger.reserve("coop", "m", "t1", 5, balance=5)
    ledger.release("t1")
    assert ledger.release("t1").state == "released"
    with pytest.raises(CreditError) as e:
        ledger.settle("t1", 1)
    assert e.value.code == "already_released"


def test_unknown_and_invalid_arguments(ledger):
    for call in (lambda: ledger.settle("nope", 1), lambda: ledger.release("nope")):
        with pytest.raises(CreditError) as e:
            call()
        assert e.value.code == "unknown_reservation"
    bad = [
        lambda: ledger.reserve("coop", "m", "t", 0, balance=5),
        lambda: ledger.reserve("coop", "m", "t", 1.5, balance=5),
        lambda: ledger.reserve("coop", "m", "t", True, balance=5),
        lambda: ledger.reserve("coop", "m", "t", 1, balance="5"),
        lambda: ledger.reserve("", "m", "t", 1, balance=5),
        lambda: ledger.reserve("coop", "m", "x" * 600, 1, balance=5),
        lambda: ledger.reserve("coop", "m", "t", 2**70, balance=2**70),
        lambda: ledger.reserve("coop", "m", "t", 1, balance=5, now_ms=-1),
        lambda: ledger.settle("t", -1),
    ]
    for call in bad:
        with pytest.raises(CreditError) as e:
            call()
        assert e.value.code == "invalid_argument"
    assert ledger.open_reservations() == []


def test_reservations_survive_reopen(tmp_path):
    path = tmp_path / "credits.db"
    with CreditLedger(path) as led:
        led.reserve("c1", "m", "t1", 3, balance=10)
        led.reserve("c1", "m", "t2", 4, balance=10)
        led.reserve("c2", "m", "t3", 1, balance=1)
        led.settle("t2", 2)
    with CreditLedger(path) as led:
        assert led.outstanding("c1", "m") == 3
        assert [r.task_id for r in led.open_reservations()] == ["t1", "t3"]
        assert [r.task_id for r in led.open_reservations("c2")] == ["t3"]
        assert led.get("t2").settled_amount == 2
        led.reserve("c1", "m", "t1", 3, balance=3)  # a retry after restart does not duplicate
        assert led.outstanding("c1", "m") == 3
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT COUNT(*) FROM reservations").fetchone()[0] == 3


def test_concurrent_reserves_never_overspend(tmp_path):
    """Many threads race for one balance: the sum reserved never exceeds it."""
    led = CreditLedger(tmp_path / "c.db")
    results = []

    def worker(i):
        for j in range(10):
            try:
                led.reserve("coop", "m", f"t{i}-{j}", 3, balance=50)
                results.append(1)
            except InsufficientCredits:
                pass

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 16 and led.outstanding("coop", "m") == 48
    led.close()


def test_two_ledgers_on_one_file_share_the_limit(tmp_path):
    a, b = CreditLedger(tmp_path / "c.db"), CreditLedger(tmp_path / "c.db")
    a.reserve("coop", "m", "t1", 4, balance=5)
    with pytest.raises(InsufficientCredits):
        b.reserve("coop", "m", "t2", 2, balance=5)
    a.close(), b.close()


CHILD = textwrap.dedent("""
    import sys
    from icn_p2p.scheduler.credits import CreditLedger
    led = CreditLedger(sys.argv[1])
    i = 0
    while True:
        led.reserve("coop", "m", f"t{i}", 1, balance=10**9)
        print(f"t{i}", flush=True)
        i += 1
""")


@pytest.mark.slow
def test_kill_9_loses_no_acknowledged_reservation(tmp_path):
    path = tmp_path / "credits.db"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    acked = []
    try:
        for line in proc.stdout:
            acked.append(line.strip())
            if len(acked) >= 200:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with CreditLedger(path) as led:
        for tid in acked:
            assert led.get(tid) is not None and led.get(tid).state == "reserved"
        held = led.outstanding("coop", "m")
        assert held >= len(acked)
        for tid in acked:  # retried after the crash: no duplicates
            led.reserve("coop", "m", tid, 1, balance=10**9)
        assert led.outstanding("coop", "m") == held
