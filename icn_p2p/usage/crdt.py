"""Replicated usage as a state-based CRDT (pure: no I/O, time passed in).

State: for each key (coop, member, month "YYYY-MM" UTC) and each writing node,
one entry of grow-only counters (cpu_ms, fuel, tasks_completed, credits_spent,
credits_earned) and a PN counter for concurrent tasks kept as two grow-only
parts (claimed, released). A node changes only its own entries.

Every change by a writer in a coop takes the writer's next sequence number in
that coop (``version``), so a version vector per coop says how far a peer has
seen each writer. Merge is the per-(key, writer) component-wise maximum of
counters and version: commutative, associative and idempotent
(``merge_entries``). Since a valid writer's counters only grow with its
version, the maximum is always one of the signed entries, so its signature can
be served onward unchanged.

Version vector semantics. ``version_vector(coop)[w] = n`` means: this node
holds writer ``w``'s complete state as of ``w``'s change ``n`` (a watermark,
not just the highest version seen). A gossiped single entry with a gap below it
does not raise the watermark, so anti-entropy still fills the gap. The
watermark rises (a) when the next change (``n + 1``) arrives, and (b) when a
``UsageDelta`` is merged: it holds every entry above ``since`` and says the
sender was complete through ``through``. A node's own usage gossip is such a
delta for its own versions (the latest state of every entry it changed since
its previous gossip), so a receiver's watermark keeps up although the versions
an entry passed through between two gossips never travel; without that, every
sync pull would send again everything above the first such gap.
``digest(coop)`` is an order-free hash of every held (key, writer, version,
counters), so equal digests mean equal state whatever the watermarks say.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import cbor2
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from icn_p2p.core.clock import month_key, month_start_ms
from icn_p2p.core.usage import MemberUsage
from icn_p2p.identity import NodeKey, is_key_did, verify

COUNTER_FIELDS = (
    "cpu_ms", "fuel", "tasks_completed", "credits_spent", "credits_earned", "claimed", "released",
)
MAX_COUNTER = 2**63 - 1  # SQLite INTEGER
MAX_FUTURE_SKEW_MS = 5 * 60_000  # a peer's clock may run this far ahead at a month boundary
MS_PER_DAY = 86_400_000
SIGNING_CONTEXT = b"icn-usage-entry/1\x00"
_MAX_ABOVE = 100_000  # versions remembered above a watermark before giving up on contiguity


class Reason:
    """Reason codes for a rejected entry (the metric label and the report)."""

    BAD_SIGNATURE = "bad_signature"
    BAD_SCHEMA = "bad_schema"
    FOREIGN_SLOT = "foreign_slot"
    REGRESSION = "regression"
    STALE = "stale"
    FUTURE_MONTH = "future_month"

    ALL = (BAD_SIGNATURE, BAD_SCHEMA, FOREIGN_SLOT, REGRESSION, STALE, FUTURE_MONTH)


class UsageRejection(ValueError):
    """An entry that may not enter the store, with its reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --- time rules ------------------------------------------------------------------


def next_month(month: str) -> str:
    year, mon = (int(p) for p in month.split("-"))
    return f"{year + mon // 12:04d}-{mon % 12 + 1:02d}"


def previous_month(month: str) -> str:
    year, mon = (int(p) for p in month.split("-"))
    return f"{year - 1:04d}-12" if mon == 1 else f"{year:04d}-{mon - 1:02d}"


def month_is_stale(month: str, now_ms: int, retention_ms: int) -> bool:
    """A month is dropped once it ended more than the retention ago; never the current one."""
    if month >= month_key(now_ms):
        return False
    return month_start_ms(next_month(month)) <= now_ms - retention_ms


def month_is_future(month: str, now_ms: int) -> bool:
    return month > month_key(now_ms + MAX_FUTURE_SKEW_MS)


# --- entries ---------------------------------------------------------------------


@dataclass(slots=True)
class UsageEntry:
    """One writer's counters for one (coop, member, month). Mutable only by its owner."""

    coop_id: str
    member: str
    month: str
    writer: str
    version: int = 0
    cpu_ms: int = 0
    fuel: int = 0
    tasks_completed: int = 0
    credits_spent: int = 0
    credits_earned: int = 0
    claimed: int = 0
    released: int = 0
    # caches, not state: the signature over the current version, the digest term
    sig: bytes | None = field(default=None, compare=False, repr=False)
    _h: int = field(default=0, compare=False, repr=False)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.member, self.month, self.writer)

    def counters(self) -> tuple[int, ...]:
        return (self.cpu_ms, self.fuel, self.tasks_completed, self.credits_spent,
                self.credits_earned, self.claimed, self.released)

    def to_obj(self) -> dict[str, Any]:
        """The CBOR-safe form that is signed and sent."""
        return {
            "coop": self.coop_id, "member": self.member, "month": self.month,
            "writer": self.writer, "v": self.version,
            "cpu_ms": self.cpu_ms, "fuel": self.fuel, "tasks_completed": self.tasks_completed,
            "credits_spent": self.credits_spent, "credits_earned": self.credits_earned,
            "claimed": self.claimed, "released": self.released,
        }

    def signing_bytes(self) -> bytes:
        return SIGNING_CONTEXT + cbor2.dumps(self.to_obj(), canonical=True)

    def copy(self) -> "UsageEntry":
        return UsageEntry(self.coop_id, self.member, self.month, self.writer, self.version,
                          *self.counters(), sig=self.sig)

    def digest_term(self) -> int:
        text = "\x00".join((self.member, self.month, self.writer, str(self.version),
                            *map(str, self.counters())))
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=16).digest(), "big")


def merge_entries(a: UsageEntry, b: UsageEntry) -> UsageEntry:
    """The CRDT join of two states of one (key, writer): component-wise maximum."""
    if (a.coop_id, a.key) != (b.coop_id, b.key):
        raise ValueError("entries of different (key, writer) slots do not merge")
    out = UsageEntry(a.coop_id, a.member, a.month, a.writer, max(a.version, b.version),
                     *(max(x, y) for x, y in zip(a.counters(), b.counters())))
    # a valid writer's higher version dominates, so its signature still holds
    for src in (a, b):
        if src.version == out.version and src.counters() == out.counters():
            out.sig = src.sig
            break
    return out


def _chain_consistent(held: UsageEntry, new: UsageEntry) -> bool:
    """A writer's counters never go backwards as its version goes forwards."""
    hc, nc = held.counters(), new.counters()
    if new.version > held.version:
        return all(n >= h for n, h in zip(nc, hc))
    if new.version < held.version:
        return all(n <= h for n, h in zip(nc, hc))
    return nc == hc


# --- the wire form -------------------------------------------------------------

_Counter = Annotated[int, Field(ge=0, le=MAX_COUNTER)]
_Name = Annotated[str, Field(min_length=1, max_length=512)]
_MONTH_RE = r"^[0-9]{4}-(0[1-9]|1[0-2])$"


class _EntryWire(BaseModel):
    """Schema of a signed entry's body on the wire (strict: no coercion)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    coop: _Name
    member: _Name
    month: Annotated[str, Field(pattern=_MONTH_RE)]
    writer: _Name
    v: Annotated[int, Field(ge=1, le=MAX_COUNTER)]
    cpu_ms: _Counter
    fuel: _Counter
    tasks_completed: _Counter
    credits_spent: _Counter
    credits_earned: _Counter
    claimed: _Counter
    released: _Counter


class _SignedWire(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    entry: dict
    signer: _Name
    sig: Annotated[bytes, Field(min_length=64, max_length=64)]


@dataclass(frozen=True, slots=True)
class SignedUsageEntry:
    """An entry as it travels: its canonical CBOR signed by the writing node."""

    entry: UsageEntry
    signer: str
    sig: bytes

    @classmethod
    def sign(cls, entry: UsageEntry, key: NodeKey) -> "SignedUsageEntry":
        return cls(entry.copy(), key.did, key.sign(entry.signing_bytes()))

    def to_wire(self) -> dict[str, Any]:
        return {"entry": self.entry.to_obj(), "signer": self.signer, "sig": self.sig}

    @classmethod
    def from_wire(cls, obj: Any) -> "SignedUsageEntry":
        """Parse (not verify) a wire dict; a malformed one raises ``UsageRejection``."""
        try:
            outer = _SignedWire.model_validate(obj)
            body = _EntryWire.model_validate(outer.entry)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise UsageRejection(Reason.BAD_SCHEMA, f"{where}: {first.get('msg')}") from None
        entry = UsageEntry(body.coop, body.member, body.month, body.writer, body.v,
                           body.cpu_ms, body.fuel, body.tasks_completed, body.credits_spent,
                           body.credits_earned, body.claimed, body.released)
        return cls(entry, outer.signer, outer.sig)

    def verify(self) -> bool:
        return verify(self.signer, self.entry.signing_bytes(), self.sig)


@dataclass(frozen=True, slots=True)
class Checked:
    """An item judged before taking the store's lock: parsed and signature-checked,
    or the rejection it earned. Lets a big merge verify without blocking writers."""

    signed: SignedUsageEntry | None
    rejection: UsageRejection | None = None
    verified: bool = True


def precheck(item: Any, held: "UsageState | None" = None) -> Checked:
    """Parse and verify one incoming item (pure). With ``held``, an item identical to
    an entry we hold skips verification here; ``check`` decides it under the lock."""
    if isinstance(item, Checked):
        return item
    try:
        s = item if isinstance(item, SignedUsageEntry) else SignedUsageEntry.from_wire(item)
        if s.signer != s.entry.writer:
            raise UsageRejection(Reason.FOREIGN_SLOT,
                                 f"signer {s.signer} wrote into {s.entry.writer}'s slot")
        if not is_key_did(s.entry.writer):
            raise UsageRejection(Reason.BAD_SCHEMA, f"writer {s.entry.writer!r} is not a did:key")
        if held is not None:
            mine = held.get_entry(s.entry.coop_id, *s.entry.key)  # a hint only: no lock here
            if mine is not None and mine.sig == s.sig and mine.version == s.entry.version:
                return Checked(s, None, verified=False)
        if not s.verify():
            raise UsageRejection(Reason.BAD_SIGNATURE, f"entry v{s.entry.version} of {s.entry.writer}")
    except UsageRejection as exc:
        return Checked(None, exc)
    return Checked(s)


@dataclass(slots=True)
class UsageDelta:
    """What a peer is missing of one coop: every entry above ``since``; the sender
    held each writer's complete state through ``through``."""

    coop_id: str
    since: dict[str, int]
    through: dict[str, int]
    entries: list[SignedUsageEntry]

    def to_wire(self) -> dict[str, Any]:
        return {"coop": self.coop_id, "since": dict(self.since), "through": dict(self.through),
                "entries": [e.to_wire() for e in self.entries]}

    @classmethod
    def from_wire(cls, obj: Any) -> "UsageDelta":
        """Parse the frame; the entries stay wire dicts' parsed form, each judged at merge."""
        if not isinstance(obj, dict) or set(obj) != {"coop", "since", "through", "entries"}:
            raise UsageRejection(Reason.BAD_SCHEMA, "a delta is {coop, since, through, entries}")
        coop, since, through, items = obj["coop"], obj["since"], obj["through"], obj["entries"]
        if not isinstance(coop, str) or not isinstance(items, list):
            raise UsageRejection(Reason.BAD_SCHEMA, "delta coop or entries has the wrong type")
        for vv in (since, through):
            if not isinstance(vv, dict) or not all(
                isinstance(k, str) and type(v) is int and 0 <= v <= MAX_COUNTER
                for k, v in vv.items()
            ):
                raise UsageRejection(Reason.BAD_SCHEMA, "a version vector maps DIDs to ints")
        return cls(coop, since, through, items)  # type: ignore[arg-type]


@dataclass(slots=True)
class MergeResult:
    """``accepted``: entries that changed state; ``unchanged``: duplicates and older
    states of what we hold (normal in gossip); ``rejected``: (reason, detail)."""

    accepted: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    unchanged: int = 0


# --- the state ------------------------------------------------------------------


class _Coop:
    __slots__ = ("coop_id", "entries", "by_key", "seq", "wm", "maxv", "above", "acc", "dirty")

    def __init__(self, coop_id: str) -> None:
        self.coop_id = coop_id
        self.entries: dict[tuple[str, str, str], UsageEntry] = {}
        self.by_key: dict[tuple[str, str], dict[str, UsageEntry]] = {}
        self.seq = 0  # our own sequence number in this coop
        self.wm: dict[str, int] = {}  # complete-through watermark per writer
        self.maxv: dict[str, int] = {}  # highest version held per writer
        self.above: dict[str, set[int]] = {}  # versions seen above the watermark
        self.acc = 0  # sum of the entries' digest terms (mod 2**128)
        self.dirty: set[tuple[str, str, str]] = set()  # entries whose digest term is stale


@dataclass(slots=True)
class Totals:
    """A member's merged counters for one month (sum over writers)."""

    cpu_ms: int = 0
    fuel: int = 0
    tasks_completed: int = 0
    credits_spent: int = 0
    credits_earned: int = 0
    claimed: int = 0
    released: int = 0


class UsageState:
    """The merged view of every writer's entries, owned by one node (``key``).

    Not thread-safe; ``UsageStore`` serialises access and persists changes. With
    ``journal=True`` every changed entry and watermark is remembered until
    ``take_changes()`` so the store can write exactly those rows.
    """

    def __init__(self, key: NodeKey, *, journal: bool = False) -> None:
        self.key = key
        self.did = key.did
        self._coops: dict[str, _Coop] = {}
        self._journal = journal
        self.changed_entries: dict[tuple[str, tuple[str, str, str]], UsageEntry] = {}
        self.changed_seqs: set[str] = set()  # coops whose own sequence number moved
        self.changed_marks: set[tuple[str, str]] = set()  # (coop, writer) watermarks that moved

    # -- reads --

    def coops(self) -> list[str]:
        return sorted(self._coops)

    def _coop(self, coop_id: str) -> _Coop:
        c = self._coops.get(coop_id)
        if c is None:
            c = self._coops[coop_id] = _Coop(coop_id)
        return c

    def entries(self, coop_id: str) -> list[UsageEntry]:
        c = self._coops.get(coop_id)
        return list(c.entries.values()) if c else []

    def get_entry(self, coop_id: str, member: str, month: str, writer: str) -> UsageEntry | None:
        c = self._coops.get(coop_id)
        return c.entries.get((member, month, writer)) if c else None

    def own_seq(self, coop_id: str) -> int:
        c = self._coops.get(coop_id)
        return c.seq if c else 0

    def version_vector(self, coop_id: str) -> dict[str, int]:
        c = self._coops.get(coop_id)
        return dict(c.wm) if c else {}

    def max_versions(self, coop_id: str) -> dict[str, int]:
        c = self._coops.get(coop_id)
        return dict(c.maxv) if c else {}

    def totals(self, coop_id: str, member: str, month: str) -> Totals:
        t = Totals()
        c = self._coops.get(coop_id)
        if c is None:
            return t
        for e in c.by_key.get((member, month), {}).values():
            t.cpu_ms += e.cpu_ms
            t.fuel += e.fuel
            t.tasks_completed += e.tasks_completed
            t.credits_spent += e.credits_spent
            t.credits_earned += e.credits_earned
            t.claimed += e.claimed
            t.released += e.released
        return t

    def concurrent(self, coop_id: str, member: str, month: str) -> int:
        """Running tasks: a release is written to its claim's month, so a task claimed
        last month and still running counts; each month's PN counter is floored at 0."""
        total = 0
        for m in (previous_month(month), month):
            t = self.totals(coop_id, member, m)
            total += max(0, t.claimed - t.released)
        return total

    def member_usage(self, coop_id: str, member: str, month: str) -> MemberUsage:
        t = self.totals(coop_id, member, month)
        return MemberUsage.from_counters(
            coop_id=coop_id, member=member, month=month, cpu_ms=t.cpu_ms, fuel=t.fuel,
            tasks_completed=t.tasks_completed, credits_spent=t.credits_spent,
            concurrent=self.concurrent(coop_id, member, month),
        )

    def members(self, coop_id: str, month: str) -> list[str]:
        c = self._coops.get(coop_id)
        if c is None:
            return []
        prev = previous_month(month)
        return sorted({m for (m, mo) in c.by_key if mo == month or mo == prev})

    def digest(self, coop_id: str) -> bytes:
        """Order-free hash of every held entry: equal digests mean equal state."""
        c = self._coops.get(coop_id)
        if c is None:
            return hashlib.blake2b(b"\x00" * 16, digest_size=16, person=b"icn-usage").digest()
        if c.dirty:
            acc = c.acc
            for k in c.dirty:
                e = c.entries[k]
                h = e.digest_term()
                acc += h - e._h
                e._h = h
            c.acc = acc % (1 << 128)
            c.dirty.clear()
        return hashlib.blake2b(c.acc.to_bytes(16, "big"), digest_size=16,
                               person=b"icn-usage").digest()

    # -- local writes --

    def apply_local(
        self, coop_id: str, member: str, month: str, *,
        cpu_ms: int = 0, fuel: int = 0, tasks_completed: int = 0, credits_spent: int = 0,
        credits_earned: int = 0, claimed: int = 0, released: int = 0,
    ) -> UsageEntry:
        """Add to this node's own entry; takes the node's next version in the coop."""
        if (cpu_ms < 0 or fuel < 0 or tasks_completed < 0 or credits_spent < 0
                or credits_earned < 0 or claimed < 0 or released < 0):
            raise ValueError("usage counters only grow: increments must be >= 0")
        c = self._coops.get(coop_id)
        if c is None:
            c = self._coop(coop_id)
        did = self.did
        k = (member, month, did)
        e = c.entries.get(k)
        if e is None:
            if not coop_id or not member:
                raise ValueError("coop_id and member must be non-empty")
            e = UsageEntry(coop_id, member, month, did)
            c.entries[k] = e
            slot = c.by_key.get((member, month))
            if slot is None:
                slot = c.by_key[(member, month)] = {}
            slot[did] = e
        v = c.seq + 1
        e.cpu_ms += cpu_ms
        e.fuel += fuel
        e.tasks_completed += tasks_completed
        e.credits_spent += credits_spent
        e.credits_earned += credits_earned
        e.claimed += claimed
        e.released += released
        if e.cpu_ms > MAX_COUNTER or e.fuel > MAX_COUNTER or e.credits_spent > MAX_COUNTER:
            raise OverflowError("usage counter beyond 2**63 - 1")
        e.version = c.seq = v
        e.sig = None
        c.dirty.add(k)
        c.maxv[did] = v
        if c.wm.get(did, 0) == v - 1:
            c.wm[did] = v
        else:  # we are missing some of our own past (restored from peers): not complete
            self._note_above(c, did, v)
        if self._journal:
            self.changed_entries[(coop_id, k)] = e
            self.changed_seqs.add(coop_id)
            self.changed_marks.add((coop_id, did))
        return e

    def _note_above(self, c: _Coop, writer: str, v: int) -> None:
        seen = c.above.get(writer)
        if seen is None:
            seen = c.above[writer] = set()
        seen.add(v)
        if len(seen) > _MAX_ABOVE:  # a long gap: rely on a full delta to close it
            seen.clear()

    def _advance(self, c: _Coop, writer: str, v: int) -> None:
        """Note version ``v`` of ``writer`` as seen; raise the watermark over contiguous runs."""
        wm = c.wm.get(writer, 0)
        if v <= wm:
            return
        if v != wm + 1:
            self._note_above(c, writer, v)
            return
        seen = c.above.get(writer)
        while seen and (v + 1) in seen:
            v += 1
            seen.discard(v)
        if seen is not None:
            for old in [x for x in seen if x <= v]:
                seen.discard(old)
            if not seen:
                del c.above[writer]
        c.wm[writer] = v
        if self._journal:
            self.changed_marks.add((c.coop_id, writer))

    # -- signing (lazy) --

    def own_signed(self, coop_id: str, member: str, month: str) -> SignedUsageEntry | None:
        """This node's signed entry for (coop, member, month), if it wrote one."""
        c = self._coops.get(coop_id)
        e = c.entries.get((member, month, self.did)) if c is not None else None
        return self.signed(e) if e is not None else None

    def signed(self, e: UsageEntry) -> SignedUsageEntry:
        """The entry as sent. Own entries are signed here, once per version."""
        if e.sig is None:
            if e.writer != self.did:
                raise ValueError("a foreign entry without its signature cannot be sent")
            e.sig = self.key.sign(e.signing_bytes())
        return SignedUsageEntry(e.copy(), e.writer, e.sig)

    def delta_since(self, coop_id: str, vv: Mapping[str, int]) -> list[SignedUsageEntry]:
        c = self._coops.get(coop_id)
        if c is None:
            return []
        behind = {w for w, mv in c.maxv.items() if mv > vv.get(w, 0)}
        if not behind:
            return []
        out = []
        for e in c.entries.values():
            if e.writer in behind and e.version > vv.get(e.writer, 0):
                out.append(self.signed(e))
        out.sort(key=lambda s: (s.entry.writer, s.entry.version))
        return out

    def delta(self, coop_id: str, vv: Mapping[str, int]) -> UsageDelta:
        return UsageDelta(coop_id, dict(vv), self.version_vector(coop_id),
                          self.delta_since(coop_id, vv))

    # -- merging signed entries --

    def check(self, item: Any, now_ms: int, retention_ms: int) -> tuple[SignedUsageEntry, UsageEntry | None]:
        """Judge one incoming entry; raises ``UsageRejection``. Returns it and what we hold."""
        verified = False
        if isinstance(item, Checked):
            if item.rejection is not None:
                raise item.rejection
            s, verified = item.signed, item.verified
        else:
            s = item if isinstance(item, SignedUsageEntry) else SignedUsageEntry.from_wire(item)
        e = s.entry
        if not isinstance(e, UsageEntry):
            raise UsageRejection(Reason.BAD_SCHEMA, "not a usage entry")
        if s.signer != e.writer:
            raise UsageRejection(Reason.FOREIGN_SLOT,
                                 f"signer {s.signer} wrote into {e.writer}'s slot")
        if not is_key_did(e.writer):
            raise UsageRejection(Reason.BAD_SCHEMA, f"writer {e.writer!r} is not a did:key")
        if month_is_future(e.month, now_ms):
            raise UsageRejection(Reason.FUTURE_MONTH, f"month {e.month} is ahead of {month_key(now_ms)}")
        if month_is_stale(e.month, now_ms, retention_ms):
            raise UsageRejection(Reason.STALE, f"month {e.month} is past retention")
        c = self._coops.get(e.coop_id)
        held = c.entries.get(e.key) if c else None
        if held is not None and held.sig is not None and held.sig == s.sig and held.version == e.version:
            return s, held  # the very entry we hold: nothing to verify or do
        if not verified and not s.verify():
            raise UsageRejection(Reason.BAD_SIGNATURE, f"entry v{e.version} of {e.writer}")
        if held is not None and not _chain_consistent(held, e):
            raise UsageRejection(
                Reason.REGRESSION,
                f"{e.writer} v{e.version} {e.counters()} against held v{held.version} {held.counters()}",
            )
        return s, held

    def install(self, s: SignedUsageEntry, held: UsageEntry | None) -> bool:
        """Put a checked entry in place; False when it changes nothing."""
        e = s.entry
        if held is not None and e.version <= held.version:
            return False
        c = self._coop(e.coop_id)
        new = e.copy()
        new.sig = s.sig
        if held is not None:
            new._h = held._h
        c.entries[new.key] = new
        slot = c.by_key.get((e.member, e.month))
        if slot is None:
            slot = c.by_key[(e.member, e.month)] = {}
        slot[e.writer] = new
        c.dirty.add(new.key)
        if e.version > c.maxv.get(e.writer, 0):
            c.maxv[e.writer] = e.version
        if e.writer == self.did and e.version > c.seq:
            c.seq = e.version  # our own past, restored from a peer: never reuse a version
            if self._journal:
                self.changed_seqs.add(e.coop_id)
        self._advance(c, e.writer, e.version)
        if self._journal:
            self.changed_entries[(e.coop_id, new.key)] = new
        return True

    def merge(self, items: Iterable[Any], *, now_ms: int, retention_ms: int) -> MergeResult:
        result = MergeResult()
        for item in items:
            self._merge_one(item, now_ms, retention_ms, result)
        return result

    def _merge_one(self, item: Any, now_ms: int, retention_ms: int, result: MergeResult,
                   coop_id: str | None = None) -> str | None:
        """Merge one item into ``result``; returns the writer when it was rejected."""
        try:
            s, held = self.check(item, now_ms, retention_ms)
            if coop_id is not None and s.entry.coop_id != coop_id:
                raise UsageRejection(Reason.BAD_SCHEMA, f"entry of {s.entry.coop_id} in a {coop_id} delta")
        except UsageRejection as exc:
            result.rejected.append((exc.reason, exc.detail))
            if exc.reason == Reason.STALE:
                return None  # a pruned month is meant to be absent
            if isinstance(item, Checked):
                item = item.signed
            writer = getattr(getattr(item, "entry", None), "writer", None)
            if writer is None and isinstance(item, dict) and isinstance(item.get("entry"), dict):
                writer = item["entry"].get("writer")
            return writer if isinstance(writer, str) else "*"
        if self.install(s, held):
            result.accepted += 1
        else:
            result.unchanged += 1
        return None

    def merge_delta(self, delta: UsageDelta, *, now_ms: int, retention_ms: int) -> MergeResult:
        """Merge a delta, then raise watermarks the sender vouched for (see module doc)."""
        result = MergeResult()
        failed: set[str] = set()
        for item in delta.entries:
            w = self._merge_one(item, now_ms, retention_ms, result, delta.coop_id)
            if w is not None:
                failed.add(w)
        if "*" in failed or not delta.coop_id:
            return result
        c = self._coops.get(delta.coop_id)
        if c is None:
            return result
        for writer, through in delta.through.items():
            if writer in failed:
                continue
            wm = c.wm.get(writer, 0)
            if wm < delta.since.get(writer, 0):
                continue  # the delta starts above what we hold: a gap may remain
            # never vouch past what we actually hold of that writer
            new = min(through, c.maxv.get(writer, 0))
            if new > wm:
                c.wm[writer] = new
                seen = c.above.get(writer)
                if seen:
                    for old in [x for x in seen if x <= new]:
                        seen.discard(old)
                    while (new + 1) in seen:
                        new += 1
                        seen.discard(new)
                        c.wm[writer] = new
                    if not seen:
                        del c.above[writer]
                if self._journal:
                    self.changed_marks.add((delta.coop_id, writer))
        return result

    # -- retention --

    def prune(self, now_ms: int, retention_ms: int) -> list[tuple[str, str]]:
        """Drop months past retention (never the current one). Returns (coop, month) dropped."""
        dropped: set[tuple[str, str]] = set()
        for coop_id, c in self._coops.items():
            stale_months = {mo for (_, mo) in c.by_key if month_is_stale(mo, now_ms, retention_ms)}
            if not stale_months:
                continue
            for k in [k for k in c.entries if k[1] in stale_months]:
                e = c.entries.pop(k)
                c.acc = (c.acc - e._h) % (1 << 128)
                c.dirty.discard(k)
                if self._journal:
                    self.changed_entries.pop((coop_id, k), None)
            for bk in [bk for bk in c.by_key if bk[1] in stale_months]:
                del c.by_key[bk]
            dropped.update((coop_id, mo) for mo in stale_months)
        return sorted(dropped)

    # -- loading and journal --

    def load_entry(self, e: UsageEntry) -> None:
        """Install a trusted entry read back from our own database."""
        c = self._coop(e.coop_id)
        c.entries[e.key] = e
        c.by_key.setdefault((e.member, e.month), {})[e.writer] = e
        c.dirty.add(e.key)
        if e.version > c.maxv.get(e.writer, 0):
            c.maxv[e.writer] = e.version

    def load_marks(self, coop_id: str, seq: int, wm: Mapping[str, int]) -> None:
        c = self._coop(coop_id)
        c.seq = max(c.seq, seq)
        c.wm.update(wm)


    def take_changes(self) -> tuple[list[UsageEntry], set[str], set[tuple[str, str]]]:
        """Entries, own sequence numbers and watermarks changed since the last call."""
        out = (list(self.changed_entries.values()), set(self.changed_seqs), set(self.changed_marks))
        self.changed_entries.clear()
        self.changed_seqs.clear()
        self.changed_marks.clear()
        return out

    def drop_changes(self) -> None:
        self.changed_entries.clear()
        self.changed_seqs.clear()
        self.changed_marks.clear()
