"""Commons credits: cost estimates and durable reservations.

ICN's V1 gate rejected a commons task when the member's balance was below 1
and kept nothing. Here a commons task reserves its estimated cost at submit,
settles the actual cost from its receipt and releases the reservation on
failure or cancel. Reservations live in SQLite (WAL, ``synchronous=FULL``):
every call is one transaction, durable before it returns, so a crash never
loses or duplicates a reservation.

The balance (credits earned - credits spent) belongs to the replicated usage
store; the ledger takes it as an argument and checks
``balance - outstanding reservations >= amount`` (ICN's ``balance < 1`` floor
is the case ``amount = 1``). After ``settle`` the caller records the settled
amount as ``credits_spent`` in the usage store, which lowers the balance it
passes next time.

Decisions:
- ``reserve`` is idempotent by task id: reserving a task again returns the
  existing reservation unchanged (whatever its state), never a second one.
  The same task id for another coop or member is an error.
- ``settle`` charges ``min(actual, reserved)``. The reservation is the price
  agreed at admission, and the executor enforces ``fuel_limit``, so the actual
  cost cannot honestly exceed the estimate; an excess is logged and not charged.
- Settling or releasing twice returns the first outcome; settling a released
  reservation (or releasing a settled one) is an error.

Synchronous: the node calls it through ``trio.to_thread.run_sync``. A lock
makes one ledger object safe from several worker threads.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from prometheus_client import Counter as PromCounter

from icn_p2p.core.clock import Clock, SystemClock
from icn_p2p.core.task import ComputeTask
from icn_p2p.metrics import REGISTRY

log = logging.getLogger(__name__)

CREDIT_RESERVATIONS = PromCounter(
    "icn_credit_reservations", "Commons credit reservation operations, by outcome",
    ["outcome"], registry=REGISTRY,
)

DEFAULT_FUEL_PER_CREDIT = 1_000_000


class CreditRate(BaseModel):
    """How much fuel one commons credit buys; every charged task costs at least ``min_cost``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fuel_per_credit: int = Field(default=DEFAULT_FUEL_PER_CREDIT, gt=0)
    min_cost: int = Field(default=1, ge=0)


DEFAULT_RATE = CreditRate()


def actual_cost(fuel_used: int, rate: CreditRate = DEFAULT_RATE) -> int:
    """Credits for ``fuel_used``: ceil(fuel / fuel_per_credit), at least ``min_cost``."""
    if fuel_used < 0:
        raise ValueError("fuel_used must not be negative")
    return max(rate.min_cost, math.ceil(fuel_used / rate.fuel_per_credit) if fuel_used else 0)


def estimate_cost(task: ComputeTask, rate: CreditRate = DEFAULT_RATE) -> int:
    """The most a task can cost: its ``fuel_limit`` priced at ``rate``."""
    return actual_cost(task.fuel_limit, rate)


State = Literal["reserved", "settled", "released"]


class Reservation(BaseModel):
    model_config = ConfigDict(frozen=True)

    task_id: str
    coop: str
    member: str
    amount: int
    state: State
    settled_amount: int | None = None
    created_ms: int
    updated_ms: int


class CreditError(Exception):
    """A ledger call that cannot proceed; ``code`` is stable, the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class InsufficientCredits(CreditError):
    def __init__(self, *, coop: str, member: str, balance: int, outstanding: int, required: int) -> None:
        self.balance = balance
        self.outstanding = outstanding
        self.required = required
        self.available = balance - outstanding
        super().__init__(
            "insufficient_commons_credits",
            f"member {member} of {coop} has {self.available} commons credits available "
            f"(balance {balance} - reserved {outstanding}) but the task needs {required}",
        )


_SCHEMA = """
CREATE TABLE IF NOT EXISTS reservations (
    task_id        TEXT PRIMARY KEY,
    coop           TEXT NOT NULL,
    member         TEXT NOT NULL,
    amount         INTEGER NOT NULL CHECK (amount > 0),
    state          TEXT NOT NULL CHECK (state IN ('reserved', 'settled', 'released')),
    settled_amount INTEGER,
    created_ms     INTEGER NOT NULL,
    updated_ms     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_open ON reservations (coop, member) WHERE state = 'reserved';
"""

_COLS = "task_id, coop, member, amount, state, settled_amount, created_ms, updated_ms"


def _row(row: tuple) -> Reservation:
    t, c, m, a, s, sa, cr, up = row
    return Reservation(task_id=t, coop=c, member=m, amount=a, state=s, settled_amount=sa,
                       created_ms=cr, updated_ms=up)


def _check_str(name: str, v: object) -> str:
    if not isinstance(v, str) or not v or len(v) > 512:
        raise CreditError("invalid_argument", f"{name} must be a non-empty string of at most 512 characters")
    return v


def _check_int(name: str, v: object, *, minimum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise CreditError("invalid_argument", f"{name} must be an integer, got {v!r}")
    if minimum is not None and v < minimum:
        raise CreditError("invalid_argument", f"{name} must be at least {minimum}, got {v}")
    if abs(v) >= 2**63:
        raise CreditError("invalid_argument", f"{name} is out of range")
    return v


class CreditLedger:
    def __init__(self, path: str | Path, *, clock: Clock | None = None) -> None:
        self.path = Path(path)
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> CreditLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _now(self, now_ms: int | None) -> int:
        return self._clock.now_ms() if now_ms is None else _check_int("now_ms", now_ms, minimum=0)

    def _get(self, task_id: str) -> Reservation | None:
        row = self._db.execute(f"SELECT {_COLS} FROM reservations WHERE task_id = ?", (task_id,)).fetchone()
        return None if row is None else _row(row)

    def _outstanding(self, coop: str, member: str) -> int:
        (total,) = self._db.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM reservations WHERE coop = ? AND member = ? AND state = 'reserved'",
            (coop, member),
        ).fetchone()
        return int(total)

    def get(self, task_id: str) -> Reservation | None:
        with self._lock:
            return self._get(task_id)

    def outstanding(self, coop: str, member: str) -> int:
        """Credits held by open reservations of ``member`` in ``coop``."""
        with self._lock:
            return self._outstanding(coop, member)

    def open_reservations(self, coop: str | None = None) -> list[Reservation]:
        """Reservations still held: after a restart the node settles or releases each."""
        q = f"SELECT {_COLS} FROM reservations WHERE state = 'reserved'"
        args: tuple = ()
        if coop is not None:
            q += " AND coop = ?"
            args = (coop,)
        with self._lock:
            return [_row(r) for r in self._db.execute(q + " ORDER BY created_ms, task_id", args)]

    def reserve(
        self, coop: str, member: str, task_id: str, amount: int, balance: int, *, now_ms: int | None = None
    ) -> Reservation:
        """Hold ``amount`` credits for ``task_id`` if ``balance - outstanding >= amount``."""
        _check_str("coop", coop)
        _check_str("member", member)
        _check_str("task_id", task_id)
        _check_int("amount", amount, minimum=1)
        _check_int("balance", balance)
        now = self._now(now_ms)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                existing = self._get(task_id)
                if existing is not None:
                    self._db.execute("COMMIT")
                    if (existing.coop, existing.member) != (coop, member):
                        CREDIT_RESERVATIONS.labels("conflict").inc()
                        raise CreditError(
                            "task_id_conflict",
                            f"task {task_id} already holds a reservation for {existing.member} of {existing.coop}",
                        )
                    CREDIT_RESERVATIONS.labels("repeat").inc()
                    return existing
                held = self._outstanding(coop, member)
                if balance - held < amount:
                    self._db.execute("COMMIT")
                    CREDIT_RESERVATIONS.labels("insufficient").inc()
                    raise InsufficientCredits(coop=coop, member=member, balance=balance,
                                              outstanding=held, required=amount)
                self._db.execute(
                    f"INSERT INTO reservations ({_COLS}) VALUES (?, ?, ?, ?, 'reserved', NULL, ?, ?)",
                    (task_id, coop, member, amount, now, now),
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        CREDIT_RESERVATIONS.labels("reserved").inc()
        log.info("credits reserved task=%s coop=%s member=%s amount=%d balance=%d outstanding=%d",
                 task_id, coop, member, amount, balance, held + amount)
        return Reservation(task_id=task_id, coop=coop, member=member, amount=amount, state="reserved",
                           settled_amount=None, created_ms=now, updated_ms=now)

    def _finish(self, task_id: str, to: State, settled: int | None, now: int) -> Reservation:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                r = self._get(task_id)
                if r is None:
                    raise CreditError("unknown_reservation", f"no reservation for task {task_id}")
                if r.state == to:
                    self._db.execute("COMMIT")
                    return r
                if r.state != "reserved":
                    raise CreditError(f"already_{r.state}",
                                      f"reservation for task {task_id} is already {r.state}, cannot be {to}")
                self._db.execute(
                    "UPDATE reservations SET state = ?, settled_amount = ?, updated_ms = ? WHERE task_id = ?",
                    (to, settled, now, task_id),
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        CREDIT_RESERVATIONS.labels(to).inc()
        return r.model_copy(update={"state": to, "settled_amount": settled, "updated_ms": now})

    def settle(self, task_id: str, actual: int, *, now_ms: int | None = None) -> int:
        """Close the reservation at the actual cost (at most the reserved amount); returns what is charged."""
        _check_str("task_id", task_id)
        _check_int("actual", actual, minimum=0)
        now = self._now(now_ms)
        with self._lock:
            r = self._get(task_id)
        if r is None:
            raise CreditError("unknown_reservation", f"no reservation for task {task_id}")
        charged = min(actual, r.amount)
        if actual > r.amount:
            log.warning("credits overrun task=%s reserved=%d actual=%d charged=%d", task_id, r.amount, actual, charged)
        done = self._finish(task_id, "settled", charged, now)
        assert done.settled_amount is not None
        log.info("credits settled task=%s member=%s charged=%d reserved=%d",
                 task_id, r.member, done.settled_amount, r.amount)
        return done.settled_amount

    def release(self, task_id: str, *, now_ms: int | None = None) -> Reservation:
        """Give the held credits back (the task failed or was cancelled)."""
        _check_str("task_id", task_id)
        done = self._finish(task_id, "released", None, self._now(now_ms))
        log.info("credits released task=%s member=%s amount=%d", task_id, done.member, done.amount)
        return done
