"""The versioned, governed policy store: SQLite (WAL), synchronous, thread-safe.

The store keeps every governance object it accepted (domain geneses, domain
changes, policy proposals, approvals) in their signed form so it can serve
them to peers, and a materialised view of what they mean (each domain's state
chain, each coop's chosen chain of policy versions, the history). The view is
recomputed with the pure folds of ``governance.py`` whenever the set of
objects of a coop or domain grows, so it depends on *which* objects a node
holds, never on the order they came in: two nodes that exchanged their objects
agree on every head, history and digest.

Ingestion filters (what is never stored): malformed wire dicts, bad proposer
signatures, invalid policy bodies, acts naming an unknown domain or domain
state (``unknown_domain*``: retry after the domain's objects arrive), a
genesis other than the pinned one, pending proposals from non-members, local
acts for governed coops. What is stored but not in effect is reported with
its reason (``pending`` = waiting for approvals, ``superseded``,
``parent_mismatch``, ``version_gap``, ``expired``...).

Tables: ``domain_geneses``, ``domain_changes`` and ``domain_states`` (the
chosen chains); ``proposals`` (every policy proposal, pending or not, with
its wire form and fold status) and ``approvals`` (one row per subject and
approver, the earliest valid one); ``orphan_approvals`` (bounded: votes whose
proposal has not arrived); ``policy_versions`` (every threshold-valid act:
``active`` on the chain or off it with its reason, plus approvers and
audit times) and ``policy_bodies`` (bodies by content hash, shared by
versions with one body, e.g. rollbacks).

Removal: only development-mode (local) coops can be removed, and only from
this node (a peer that still holds them can sync them back). Governed removal
is out of scope; a domain publishes a restrictive policy instead.

Time: ``now_ms`` is passed in. It only stamps the node-local audit fields
(``received_at_ms``, ``accepted_at_ms``) and decides ``current()``; it never
changes which acts are valid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

import cbor2
from pydantic import BaseModel, ConfigDict

from icn_p2p.core.policy import CoopSchedulingPolicy
from icn_p2p.identity.keys import NodeKey
from icn_p2p.policy.diff import PolicyDiff, diff_policies
from icn_p2p.policy.governance import (
    ActCandidate,
    Approval,
    DomainAct,
    DomainChange,
    DomainGenesis,
    DomainState,
    GovernanceError,
    PolicyAct,
    PolicyProposal,
    Reason,
    canonical_cbor,
    check_domain_change,
    check_genesis,
    check_proposal,
    resolve_domain,
    resolve_policy_chain,
)

try:
    from icn_p2p.metrics import REGISTRY
except ImportError:  # pragma: no cover
    from prometheus_client import REGISTRY  # type: ignore[assignment]
from prometheus_client import Counter

log = logging.getLogger(__name__)

__all__ = [
    "ApplyResult",
    "Head",
    "PolicyStore",
    "PolicyVersion",
    "make_rollback_proposal",
]

ACTS_ACCEPTED = Counter(
    "icn_governance_acts_accepted", "Policy acts that became the coop's chain, by mode",
    ["mode"], registry=REGISTRY,
)
ACTS_REJECTED = Counter(
    "icn_governance_acts_rejected", "Governance objects not taken into effect, by reason",
    ["reason"], registry=REGISTRY,
)

ORPHAN_APPROVALS_MAX = 10_000
_ACTIVE = "active"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS domain_geneses (
    genesis_id TEXT PRIMARY KEY, name TEXT NOT NULL, wire BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS domain_geneses_name ON domain_geneses(name);
CREATE TABLE IF NOT EXISTS domain_changes (
    change_id TEXT PRIMARY KEY, name TEXT NOT NULL, genesis_id TEXT NOT NULL, seq INTEGER NOT NULL,
    wire BLOB NOT NULL, status TEXT NOT NULL, received_at_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS domain_changes_name ON domain_changes(name);
CREATE TABLE IF NOT EXISTS domain_states (
    state_hash TEXT PRIMARY KEY, name TEXT NOT NULL, genesis_id TEXT NOT NULL, seq INTEGER NOT NULL,
    members TEXT NOT NULL, threshold INTEGER NOT NULL, created_at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS proposals (
    proposal_id TEXT PRIMARY KEY, coop_id TEXT NOT NULL, domain TEXT, domain_state TEXT,
    version INTEGER NOT NULL, parent_hash TEXT, policy_hash TEXT NOT NULL, proposer TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL, expires_at_ms INTEGER, effective_at_ms INTEGER,
    reason TEXT NOT NULL, wire BLOB NOT NULL, status TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL, accepted_at_ms INTEGER);
CREATE INDEX IF NOT EXISTS proposals_coop ON proposals(coop_id, version);
CREATE INDEX IF NOT EXISTS proposals_domain ON proposals(domain);
CREATE TABLE IF NOT EXISTS approvals (
    subject_id TEXT NOT NULL, approver TEXT NOT NULL, approved_at_ms INTEGER NOT NULL,
    signature BLOB NOT NULL, received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (subject_id, approver));
CREATE TABLE IF NOT EXISTS orphan_approvals (
    subject_id TEXT NOT NULL, approver TEXT NOT NULL, approved_at_ms INTEGER NOT NULL,
    signature BLOB NOT NULL, received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (subject_id, approver));
CREATE TABLE IF NOT EXISTS policy_bodies (policy_hash TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS policy_versions (
    coop_id TEXT NOT NULL, version INTEGER NOT NULL, act_id TEXT NOT NULL,
    policy_hash TEXT NOT NULL, status TEXT NOT NULL, mode TEXT NOT NULL,
    effective_at_ms INTEGER, accepted_at_ms INTEGER, approvers TEXT NOT NULL,
    threshold_at_ms INTEGER, PRIMARY KEY (coop_id, act_id));
CREATE INDEX IF NOT EXISTS policy_versions_chain ON policy_versions(coop_id, status, version);
"""


class ApplyResult(BaseModel):
    """What became of one applied object. ``reason`` is a ``Reason`` code."""

    model_config = ConfigDict(frozen=True)

    accepted: bool
    reason: str
    version: int | None = None
    act_id: str | None = None
    head_version: int | None = None  # the coop's (or domain's) head after applying
    notes: tuple[str, ...] = ()  # informational codes: non_member_signature, bad_signature...
    detail: str = ""


class Head(NamedTuple):
    version: int
    policy_hash: str
    act_id: str


class PolicyVersion(BaseModel):
    """One threshold-valid act of a coop, with its audit metadata."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    coop_id: str
    version: int
    policy_hash: str
    policy: CoopSchedulingPolicy
    act_id: str
    mode: str  # "governed" | "local"
    status: str  # "active" (on the chain) or the reason it is not
    domain: str | None
    domain_state: str | None
    proposer: str
    approvers: tuple[str, ...]
    reason: str
    parent_hash: str | None
    created_at_ms: int
    threshold_at_ms: int | None
    effective_at_ms: int | None
    expires_at_ms: int | None
    accepted_at_ms: int | None  # when this node first judged it valid (node-local)
    diff: PolicyDiff | None = None  # from its parent version's body (history only)


class _ChainEntry(NamedTuple):
    version: int
    policy_hash: str
    act_id: str
    effective_at_ms: int | None


def _result_ok(status: str) -> bool:
    return status == Reason.ACCEPTED.value


class PolicyStore:
    """Durable governed policy state of one node. All methods are synchronous and thread-safe."""

    def __init__(
        self,
        path: str | Path,
        *,
        pinned: Mapping[str, str] | None = None,
        coop_domains: Mapping[str, str] | None = None,
        local_did: str | None = None,
        accept_foreign_local: bool = True,
    ) -> None:
        """Open (or create) the store.

        ``pinned``: domain name -> genesis id this node trusts for that name.
        ``coop_domains``: coop id -> the only domain allowed to govern it.
        ``local_did``: this node's DID; with ``accept_foreign_local=False``
        only its own local (development) acts are taken.
        """
        self.path = Path(path)
        self.pinned = dict(pinned or {})
        self.coop_domains = dict(coop_domains or {})
        self.local_did = local_did
        self.accept_foreign_local = accept_foreign_local
        self._lock = threading.RLock()
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._policies: dict[str, CoopSchedulingPolicy] = {}
        self._states: dict[str, DomainState] = {}
        self._domain_heads: dict[str, DomainState] = {}
        self._chains: dict[str, list[_ChainEntry]] = {}
        self._digest: bytes | None = None
        with self._lock:
            self._load()

    # --- lifecycle -------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "PolicyStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _load(self) -> None:
        """Rebuild the in-memory view; re-fold domains (pins may have changed) and their coops."""
        old = {r[0] for r in self._db.execute("SELECT state_hash FROM domain_states")}
        names = [r[0] for r in self._db.execute(
            "SELECT DISTINCT name FROM domain_geneses UNION SELECT DISTINCT name FROM domain_changes")]
        self._tx_begin()
        try:
            for name in names:
                self._fold_domain(name)
            changed = set(self._states) != old
            coops = [r[0] for r in self._db.execute("SELECT DISTINCT coop_id FROM proposals")]
            if changed:
                for coop in coops:
                    self._fold_coop(coop, None)
            self._tx_commit()
        except BaseException:
            self._tx_rollback()
            raise
        for coop in coops:
            self._chains[coop] = self._read_chain(coop)
        self._digest = None

    def _tx_begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def _tx_commit(self) -> None:
        self._db.execute("COMMIT")

    def _tx_rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _tx(self, fn, *args):
        """Run ``fn`` under the lock in one SQLite transaction."""
        with self._lock:
            self._tx_begin()
            try:
                out = fn(*args)
                self._tx_commit()
            except BaseException:
                self._tx_rollback()
                raise
            self._digest = None
            return out

    # --- domains ---------------------------------------------------------------------

    def apply_genesis(self, genesis: DomainGenesis | Mapping[str, Any], now_ms: int) -> ApplyResult:
        """Take a domain genesis (object or wire dict)."""
        try:
            g = genesis if isinstance(genesis, DomainGenesis) else DomainGenesis.from_wire(genesis)
        except GovernanceError as exc:
            return self._reject(exc.reason, detail=exc.detail)
        bad = check_genesis(g, self.pinned)
        if bad is not None:
            return self._reject(bad, act_id=g.genesis_id)
        return self._tx(self._apply_genesis, g, now_ms)

    def _apply_genesis(self, g: DomainGenesis, now_ms: int) -> ApplyResult:
        cur = self._db.execute(
            "INSERT OR IGNORE INTO domain_geneses VALUES (?,?,?,?)",
            (g.genesis_id, g.name, canonical_cbor(g.to_wire()), now_ms))
        if cur.rowcount == 0:
            return self._reject(Reason.REPLAYED, act_id=g.genesis_id)
        res = self._fold_domain(g.name)
        if res.rival_geneses:
            log.warning("governance.rival_genesis domain=%s chosen=%s rivals=%s pinned=%s",
                        g.name, res.genesis_id, ",".join(res.rival_geneses), g.name in self.pinned)
        self._refold_coops_of(g.name, now_ms)
        chosen = res.genesis_id == g.genesis_id
        reason = Reason.ACCEPTED if chosen else Reason.SUPERSEDED
        log.info("governance.genesis domain=%s id=%s result=%s", g.name, g.genesis_id, reason.value)
        return ApplyResult(accepted=chosen, reason=reason.value, version=0, act_id=g.genesis_id,
                           head_version=res.head.seq if res.head else None)

    def apply_domain_act(self, act: DomainAct | DomainChange | Mapping[str, Any],
                         now_ms: int) -> ApplyResult:
        """Take a domain change with approvals (a bare ``DomainChange`` is a pending proposal)."""
        try:
            if isinstance(act, DomainChange):
                act = DomainAct(change=act)
            elif not isinstance(act, DomainAct):
                act = DomainAct.from_wire(act)
        except GovernanceError as exc:
            return self._reject(exc.reason, detail=exc.detail)
        ch = act.change
        bad = check_domain_change(ch)
        if bad is not None:
            return self._reject(bad, act_id=ch.change_id)
        return self._tx(self._apply_domain_act, act, now_ms)

    def _apply_domain_act(self, act: DomainAct, now_ms: int) -> ApplyResult:
        ch = act.change
        head = self._domain_heads.get(ch.domain)
        if head is None or head.genesis_id != ch.genesis_id:
            return self._reject(Reason.UNKNOWN_DOMAIN, act_id=ch.change_id)
        parent = self._states.get(ch.parent)
        if parent is None:
            return self._reject(Reason.UNKNOWN_DOMAIN_STATE, act_id=ch.change_id)
        good, bad = self._verified(act.approvals, ch.change_id)
        known = self._db.execute("SELECT 1 FROM domain_changes WHERE change_id=?",
                                 (ch.change_id,)).fetchone()
        if not known:
            members = set(parent.members)
            if ch.proposer not in members and len({a.approver for a in good} & members) < parent.threshold:
                return self._reject(Reason.NON_MEMBER_PROPOSER, act_id=ch.change_id)
            self._db.execute("INSERT INTO domain_changes VALUES (?,?,?,?,?,?,?)",
                             (ch.change_id, ch.domain, ch.genesis_id, ch.seq,
                              canonical_cbor(ch.to_wire()), Reason.PENDING.value, now_ms))
            self._adopt_orphans(ch.change_id)
        added = self._insert_approvals(good, now_ms)
        if known and not added:
            return self._reject(Reason.REPLAYED, act_id=ch.change_id, notes=bad)
        return self._domain_result(ch, now_ms, bad)

    def _domain_result(self, ch: DomainChange, now_ms: int, notes: tuple[str, ...] = ()) -> ApplyResult:
        res = self._fold_domain(ch.domain)
        self._refold_coops_of(ch.domain, now_ms)
        status = res.statuses.get(ch.change_id, Reason.PARENT_MISMATCH.value)
        if not _result_ok(status) and status != Reason.PENDING.value:
            ACTS_REJECTED.labels(reason=status).inc()
        log.info("governance.domain_change domain=%s id=%s seq=%d result=%s",
                 ch.domain, ch.change_id, ch.seq, status)
        return ApplyResult(accepted=_result_ok(status), reason=status, version=ch.seq,
                           act_id=ch.change_id, head_version=res.head.seq if res.head else None,
                           notes=notes)

    def import_domain(self, export: Mapping[str, Any], now_ms: int) -> list[ApplyResult]:
        """Apply an ``export_domain`` dict from a peer (genesis first, then changes by seq)."""
        if not isinstance(export, Mapping) or export.get("type") != "icn.domain.export/1":
            return [self._reject(Reason.MALFORMED, detail="not a domain export")]
        out = [self.apply_genesis(export.get("genesis"), now_ms)]
        changes = export.get("changes", [])
        if not isinstance(changes, list):
            return out + [self._reject(Reason.MALFORMED, detail="changes must be a list")]

        def seq_of(item: Any) -> int:
            try:
                return int(item["change"]["seq"])
            except (KeyError, TypeError, ValueError):
                return 0
        out += [self.apply_domain_act(c, now_ms) for c in sorted(changes, key=seq_of)]
        return out

    def export_domain(self, name: str) -> dict[str, Any] | None:
        """The chosen genesis of ``name`` and every stored change of it (with approvals)."""
        with self._lock:
            head = self._domain_heads.get(name)
            if head is None:
                return None
            row = self._db.execute("SELECT wire FROM domain_geneses WHERE genesis_id=?",
                                   (head.genesis_id,)).fetchone()
            changes = []
            for cid, wire in self._db.execute(
                    "SELECT change_id, wire FROM domain_changes WHERE name=? AND genesis_id=? "
                    "ORDER BY seq, change_id", (name, head.genesis_id)):
                changes.append({"type": "icn.domain.act/1", "change": cbor2.loads(wire),
                                "approvals": self._approval_wires(cid)})
            return {"type": "icn.domain.export/1", "genesis": cbor2.loads(row[0]), "changes": changes}

    def domain_state(self, name: str) -> DomainState | None:
        """The head state of a domain (what new proposals should name)."""
        with self._lock:
            return self._domain_heads.get(name)

    def domain_states(self) -> dict[str, DomainState]:
        with self._lock:
            return dict(self._domain_heads)

    def _fold_domain(self, name: str):
        geneses = []
        for (wire,) in self._db.execute("SELECT wire FROM domain_geneses WHERE name=?", (name,)):
            geneses.append(DomainGenesis.from_wire(cbor2.loads(wire)))
        changes = []
        for cid, wire in self._db.execute(
                "SELECT change_id, wire FROM domain_changes WHERE name=?", (name,)):
            ch = DomainChange.from_wire(cbor2.loads(wire))
            approvals = [(ch.proposer, ch.created_at_ms), *self._approval_pairs(cid)]
            changes.append((ch, approvals))
        res = resolve_domain(name, [g for g in geneses if check_genesis(g, self.pinned) is None],
                             changes, self.pinned.get(name))
        for cid, status in res.statuses.items():
            self._db.execute("UPDATE domain_changes SET status=? WHERE change_id=?", (status, cid))
        self._db.execute("DELETE FROM domain_states WHERE name=?", (name,))
        for s in [s for s in self._states.values() if s.name == name]:
            del self._states[s.state_hash]
        self._domain_heads.pop(name, None)
        for s in res.states:
            self._db.execute("INSERT INTO domain_states VALUES (?,?,?,?,?,?,?)",
                             (s.state_hash, s.name, s.genesis_id, s.seq, json.dumps(list(s.members)),
                              s.threshold, s.created_at_ms))
            self._states[s.state_hash] = s
        if res.head is not None:
            self._domain_heads[name] = res.head
        return res

    def _refold_coops_of(self, domain: str, now_ms: int) -> None:
        for (coop,) in self._db.execute(
                "SELECT DISTINCT coop_id FROM proposals WHERE domain=?", (domain,)).fetchall():
            self._fold_coop(coop, now_ms)

    # --- approvals ------------------------------------------------------------------

    @staticmethod
    def _verified(approvals: Iterable[Approval], subject: str) -> tuple[list[Approval], tuple[str, ...]]:
        good, bad = [], False
        for a in approvals:
            if a.proposal_id == subject and a.verify():
                good.append(a)
            else:
                bad = True
        return good, ((Reason.BAD_SIGNATURE.value,) if bad else ())

    def _insert_approvals(self, approvals: Iterable[Approval], now_ms: int, table: str = "approvals") -> int:
        """Insert or keep the earliest (then lowest signature) approval per (subject, approver)."""
        added = 0
        for a in approvals:
            row = self._db.execute(
                f"SELECT approved_at_ms, signature FROM {table} WHERE subject_id=? AND approver=?",
                (a.proposal_id, a.approver)).fetchone()
            if row is not None and (row[0], row[1]) <= (a.approved_at_ms, a.signature):
                continue
            self._db.execute(f"INSERT OR REPLACE INTO {table} VALUES (?,?,?,?,?)",
                             (a.proposal_id, a.approver, a.approved_at_ms, a.signature, now_ms))
            added += 1
        return added

    def _adopt_orphans(self, subject: str) -> None:
        rows = self._db.execute(
            "SELECT subject_id, approver, approved_at_ms, signature FROM orphan_approvals "
            "WHERE subject_id=?", (subject,)).fetchall()
        self._db.execute("DELETE FROM orphan_approvals WHERE subject_id=?", (subject,))
        self._insert_approvals(
            (Approval(proposal_id=r[0], approver=r[1], approved_at_ms=r[2], signature=r[3]) for r in rows),
            0)

    def _approval_pairs(self, subject: str) -> list[tuple[str, int]]:
        return [(r[0], r[1]) for r in self._db.execute(
            "SELECT approver, approved_at_ms FROM approvals WHERE subject_id=?", (subject,))]

    def _approval_wires(self, subject: str) -> list[dict[str, Any]]:
        return [Approval(proposal_id=subject, approver=r[0], approved_at_ms=r[1], signature=r[2]).to_wire()
                for r in self._db.execute(
                    "SELECT approver, approved_at_ms, signature FROM approvals WHERE subject_id=? "
                    "ORDER BY approver", (subject,))]

    def add_approval(self, approval: Approval | Mapping[str, Any], now_ms: int) -> ApplyResult | None:
        """Take one vote. Returns a result when it decided something (accepted, or refused);
        None when it was stored and its proposal still waits (or has not arrived yet)."""
        try:
            a = approval if isinstance(approval, Approval) else Approval.from_wire(approval)
        except GovernanceError as exc:
            return self._reject(exc.reason, detail=exc.detail)
        if not a.verify():
            return self._reject(Reason.BAD_SIGNATURE, act_id=a.proposal_id)
        return self._tx(self._add_approval, a, now_ms)

    def _add_approval(self, a: Approval, now_ms: int) -> ApplyResult | None:
        row = self._db.execute("SELECT coop_id, status FROM proposals WHERE proposal_id=?",
                               (a.proposal_id,)).fetchone()
        if row is not None:
            if not self._insert_approvals([a], now_ms):
                return self._reject(Reason.REPLAYED, act_id=a.proposal_id)
            before = row[1]
            res = self._coop_result(row[0], a.proposal_id, now_ms)
            return res if res.reason != before or res.accepted else None
        crow = self._db.execute("SELECT name, status FROM domain_changes WHERE change_id=?",
                                (a.proposal_id,)).fetchone()
        if crow is not None:
            if not self._insert_approvals([a], now_ms):
                return self._reject(Reason.REPLAYED, act_id=a.proposal_id)
            ch = DomainChange.from_wire(cbor2.loads(self._db.execute(
                "SELECT wire FROM domain_changes WHERE change_id=?", (a.proposal_id,)).fetchone()[0]))
            res = self._domain_result(ch, now_ms)
            return res if res.reason != crow[1] or res.accepted else None
        # A vote ahead of its proposal: keep it (bounded) if a known member cast it.
        if not any(a.approver in s.members for s in self._domain_heads.values()):
            return self._reject(Reason.UNKNOWN_PROPOSAL, act_id=a.proposal_id)
        (n,) = self._db.execute("SELECT COUNT(*) FROM orphan_approvals").fetchone()
        if n >= ORPHAN_APPROVALS_MAX:
            return self._reject(Reason.UNKNOWN_PROPOSAL, act_id=a.proposal_id, detail="orphan votes full")
        self._insert_approvals([a], now_ms, table="orphan_approvals")
        return None

    # --- policy acts ------------------------------------------------------------------

    def apply_act(self, act: PolicyAct | Mapping[str, Any], now_ms: int) -> ApplyResult:
        """Take a policy act (object or wire dict): a proposal and the approvals it carries."""
        try:
            act = act if isinstance(act, PolicyAct) else PolicyAct.from_wire(act)
        except GovernanceError as exc:
            return self._reject(exc.reason, detail=exc.detail)
        p = act.proposal
        static = check_proposal(p)
        if static.reason is not None:
            return self._reject(static.reason, act_id=p.proposal_id, version=p.version, detail=static.detail)
        assert static.policy is not None
        return self._tx(self._apply_act, act, static.policy, now_ms)

    def add_proposal(self, proposal: PolicyProposal | Mapping[str, Any], now_ms: int) -> ApplyResult:
        """Take a proposal before its approvals (``pending`` until threshold)."""
        try:
            p = proposal if isinstance(proposal, PolicyProposal) else PolicyProposal.from_wire(proposal)
        except GovernanceError as exc:
            return self._reject(exc.reason, detail=exc.detail)
        return self.apply_act(PolicyAct(proposal=p), now_ms)

    def _apply_act(self, act: PolicyAct, policy: CoopSchedulingPolicy, now_ms: int) -> ApplyResult:
        p = act.proposal
        pid = p.proposal_id
        if p.domain is None:
            if not self.accept_foreign_local and p.proposer != self.local_did:
                return self._reject(Reason.FOREIGN_LOCAL, act_id=pid, version=p.version)
            if self._is_governed(p.coop_id):
                return self._reject(Reason.GOVERNED_COOP, act_id=pid, version=p.version)
            good, notes = [], ()
        else:
            pin = self.coop_domains.get(p.coop_id)
            if pin is not None and pin != p.domain:
                return self._reject(Reason.DOMAIN_MISMATCH, act_id=pid, version=p.version,
                                    detail=f"coop {p.coop_id} is pinned to {pin}")
            if p.domain not in self._domain_heads:
                return self._reject(Reason.UNKNOWN_DOMAIN, act_id=pid, version=p.version)
            state = self._states.get(p.domain_state or "")
            if state is None or state.name != p.domain:
                return self._reject(Reason.UNKNOWN_DOMAIN_STATE, act_id=pid, version=p.version)
            good, notes = self._verified(act.approvals, pid)
            if {a.approver for a in good if a.approver not in state.members} or (
                    p.proposer not in state.members):
                notes = (*notes, Reason.NON_MEMBER_SIGNATURE.value)
        known = self._db.execute("SELECT 1 FROM proposals WHERE proposal_id=?", (pid,)).fetchone()
        if not known:
            if p.domain is not None:
                members = set(state.members)
                voters = {a.approver for a in good} | {p.proposer}
                if p.proposer not in members and len(voters & members) < state.threshold:
                    return self._reject(Reason.NON_MEMBER_PROPOSER, act_id=pid, version=p.version,
                                        notes=notes)
            policy_hash = policy.content_hash()
            self._db.execute(
                "INSERT OR IGNORE INTO policy_bodies VALUES (?,?)",
                (policy_hash, policy.canonical_bytes().decode()))
            self._db.execute(
                "INSERT INTO proposals VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (pid, p.coop_id, p.domain, p.domain_state, p.version, p.parent_hash, policy_hash,
                 p.proposer, p.created_at_ms, p.expires_at_ms, p.effective_at_ms, p.reason,
                 canonical_cbor(p.to_wire()), Reason.PENDING.value, now_ms, None))
            self._adopt_orphans(pid)
        added = self._insert_approvals(good, now_ms)
        if known and not added:
            return self._reject(Reason.REPLAYED, act_id=pid, version=p.version, notes=notes)
        return self._coop_result(p.coop_id, pid, now_ms, notes)

    def _coop_result(self, coop_id: str, act_id: str, now_ms: int, notes: tuple[str, ...] = ()) -> ApplyResult:
        before = self._chains.get(coop_id, [])
        statuses = self._fold_coop(coop_id, now_ms)
        status = statuses.get(act_id)
        if status is None:  # removed by the fold (a local act of a coop that became governed)
            status = Reason.GOVERNED_COOP.value
        row = self._db.execute("SELECT version, domain FROM proposals WHERE proposal_id=?",
                               (act_id,)).fetchone()
        version = row[0] if row else None
        chain = self._chains.get(coop_id, [])
        if _result_ok(status):
            if act_id not in {e.act_id for e in before}:
                ACTS_ACCEPTED.labels(mode="local" if row and row[1] is None else "governed").inc()
        elif status != Reason.PENDING.value:
            ACTS_REJECTED.labels(reason=status).inc()
        log.info("governance.act coop=%s act=%s version=%s result=%s head=%s",
                 coop_id, act_id[:16], version, status, chain[-1].version if chain else None)
        return ApplyResult(accepted=_result_ok(status), reason=status, version=version, act_id=act_id,
                           head_version=chain[-1].version if chain else None, notes=tuple(notes))

    def _is_governed(self, coop_id: str) -> bool:
        return self._db.execute(
            "SELECT 1 FROM policy_versions WHERE coop_id=? AND status=? AND mode='governed' LIMIT 1",
            (coop_id, _ACTIVE)).fetchone() is not None

    def _fold_coop(self, coop_id: str, now_ms: int | None) -> dict[str, str]:
        rows = self._db.execute(
            "SELECT proposal_id, version, parent_hash, policy_hash, domain, domain_state, proposer, "
            "created_at_ms, expires_at_ms FROM proposals WHERE coop_id=?", (coop_id,)).fetchall()
        votes: dict[str, list[tuple[str, int]]] = {}
        for sid, who, at in self._db.execute(
                "SELECT a.subject_id, a.approver, a.approved_at_ms FROM approvals a "
                "JOIN proposals p ON p.proposal_id = a.subject_id WHERE p.coop_id=?", (coop_id,)):
            votes.setdefault(sid, []).append((who, at))
        cands = [ActCandidate(
            act_id=r[0], coop_id=coop_id, version=r[1], parent_hash=r[2], policy_hash=r[3], domain=r[4],
            domain_state=r[5], proposer=r[6], created_at_ms=r[7], expires_at_ms=r[8],
            approvals=((r[6], r[7]), *votes.get(r[0], ()))) for r in rows]
        res = resolve_policy_chain(cands, self._states, coop_domain=self.coop_domains.get(coop_id))
        statuses = dict(res.statuses)
        self._db.execute("DELETE FROM policy_versions WHERE coop_id=?", (coop_id,))
        meta = {r[0]: (r[1], r[2]) for r in self._db.execute(
            "SELECT proposal_id, effective_at_ms, accepted_at_ms FROM proposals WHERE coop_id=?",
            (coop_id,))}
        for act_id, j in res.judged.items():
            status = statuses[act_id]
            if status == Reason.GOVERNED_COOP.value and j.cand.domain is None:
                # never effective again: drop it so every node keeps the same history
                self._db.execute("DELETE FROM proposals WHERE proposal_id=?", (act_id,))
                self._db.execute("DELETE FROM approvals WHERE subject_id=?", (act_id,))
                continue
            effective_at, accepted_at = meta[act_id]
            if accepted_at is None:
                accepted_at = now_ms
            self._db.execute(
                "INSERT INTO policy_versions VALUES (?,?,?,?,?,?,?,?,?,?)",
                (coop_id, j.cand.version, act_id, j.cand.policy_hash,
                 _ACTIVE if status == Reason.ACCEPTED.value else status, j.cand.mode, effective_at,
                 accepted_at, json.dumps(list(j.approvers)),
                 j.tally.threshold_at_ms if j.tally else j.cand.created_at_ms))
            if meta[act_id][1] is None and accepted_at is not None:
                self._db.execute("UPDATE proposals SET accepted_at_ms=? WHERE proposal_id=?",
                                 (accepted_at, act_id))
        self._db.executemany("UPDATE proposals SET status=? WHERE proposal_id=? AND status!=?",
                             [(st, a, st) for a, st in statuses.items()])
        self._chains[coop_id] = self._read_chain(coop_id)
        return statuses

    def _read_chain(self, coop_id: str) -> list[_ChainEntry]:
        return [_ChainEntry(*r) for r in self._db.execute(
            "SELECT version, policy_hash, act_id, effective_at_ms FROM policy_versions "
            "WHERE coop_id=? AND status=? ORDER BY version", (coop_id, _ACTIVE))]

    # --- reads -----------------------------------------------------------------------

    def _policy(self, policy_hash: str) -> CoopSchedulingPolicy | None:
        """One object per body, so the admission engine's per-object caches keep hitting."""
        p = self._policies.get(policy_hash)
        if p is None:
            row = self._db.execute("SELECT body FROM policy_bodies WHERE policy_hash=?",
                                   (policy_hash,)).fetchone()
            if row is None:
                return None
            p = CoopSchedulingPolicy.from_json(row[0])
            self._policies[policy_hash] = p
        return p

    def get_by_hash(self, policy_hash: str) -> CoopSchedulingPolicy | None:
        """A policy body by content hash (re-read the version a task was admitted under)."""
        with self._lock:
            return self._policy(policy_hash)

    def current(self, coop_id: str, now_ms: int) -> PolicyVersion | None:
        """The highest chain version whose effective time has come (None: no policy yet)."""
        with self._lock:
            for e in reversed(self._chains.get(coop_id, [])):
                if e.effective_at_ms is None or e.effective_at_ms <= now_ms:
                    return self._version(coop_id, e.act_id)
            return None

    def current_policy(self, coop_id: str, now_ms: int) -> CoopSchedulingPolicy | None:
        """``current(...).policy`` without building the audit record (the admission path)."""
        with self._lock:
            for e in reversed(self._chains.get(coop_id, [])):
                if e.effective_at_ms is None or e.effective_at_ms <= now_ms:
                    return self._policy(e.policy_hash)
            return None

    def get(self, coop_id: str, version: int) -> PolicyVersion | None:
        """The chain's version ``version`` of a coop."""
        with self._lock:
            for e in self._chains.get(coop_id, []):
                if e.version == version:
                    return self._version(coop_id, e.act_id)
            return None

    def coops(self) -> list[str]:
        with self._lock:
            return sorted(c for c, chain in self._chains.items() if chain)

    def heads(self) -> dict[str, Head]:
        """coop id -> its chain head (highest version, effective or not)."""
        with self._lock:
            return {c: Head(chain[-1].version, chain[-1].policy_hash, chain[-1].act_id)
                    for c, chain in self._chains.items() if chain}

    def _version(self, coop_id: str, act_id: str, diff: bool = False) -> PolicyVersion:
        r = self._db.execute(
            "SELECT v.version, v.policy_hash, v.status, v.mode, v.effective_at_ms, v.accepted_at_ms, "
            "v.approvers, v.threshold_at_ms, p.domain, p.domain_state, p.proposer, p.reason, "
            "p.parent_hash, p.created_at_ms, p.expires_at_ms FROM policy_versions v "
            "JOIN proposals p ON p.proposal_id = v.act_id WHERE v.coop_id=? AND v.act_id=?",
            (coop_id, act_id)).fetchone()
        policy = self._policy(r[1])
        d = None
        if diff:
            parent = self._policy(r[12]) if r[12] else None
            d = diff_policies(parent, policy)
        return PolicyVersion(
            coop_id=coop_id, version=r[0], policy_hash=r[1], policy=policy, act_id=act_id, mode=r[3],
            status=r[2], domain=r[8], domain_state=r[9], proposer=r[10],
            approvers=tuple(json.loads(r[6])), reason=r[11], parent_hash=r[12], created_at_ms=r[13],
            threshold_at_ms=r[7], effective_at_ms=r[4], expires_at_ms=r[14], accepted_at_ms=r[5],
            diff=d)

    def history(self, coop_id: str) -> list[PolicyVersion]:
        """Every threshold-valid act of a coop, by version; the chain's first at each version.

        Each entry carries ``diff`` from the body it names as parent."""
        with self._lock:
            rows = self._db.execute(
                "SELECT act_id FROM policy_versions WHERE coop_id=? "
                "ORDER BY version, status != 'active', act_id", (coop_id,)).fetchall()
            return [self._version(coop_id, r[0], diff=True) for r in rows]

    def status(self, act_id: str) -> str | None:
        """The fold status of a stored proposal or domain change (None: unknown here)."""
        with self._lock:
            row = self._db.execute("SELECT status FROM proposals WHERE proposal_id=? UNION ALL "
                                   "SELECT status FROM domain_changes WHERE change_id=?",
                                   (act_id, act_id)).fetchone()
            return row[0] if row else None

    def get_act(self, act_id: str) -> PolicyAct | None:
        with self._lock:
            wire = self._act_wire(act_id)
            return PolicyAct.from_wire(wire) if wire else None

    def _act_wire(self, act_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT wire FROM proposals WHERE proposal_id=?", (act_id,)).fetchone()
        if row is None:
            return None
        return {"type": "icn.policy.act/1", "proposal": cbor2.loads(row[0]),
                "approvals": self._approval_wires(act_id)}

    # --- sync -----------------------------------------------------------------------

    def acts_since(self, coop_id: str, version: int = 0) -> list[dict[str, Any]]:
        """Wire dicts of every threshold-valid act of a coop above ``version`` (chain and rivals),
        by version then id, each with all the approvals this node holds."""
        with self._lock:
            rows = self._db.execute(
                "SELECT act_id FROM policy_versions WHERE coop_id=? AND version>? "
                "ORDER BY version, act_id", (coop_id, version)).fetchall()
            return [w for (a,) in rows if (w := self._act_wire(a)) is not None]

    def pending(self, coop_id: str | None = None) -> list[dict[str, Any]]:
        """Wire dicts of acts still waiting for approvals (votes travel until threshold)."""
        with self._lock:
            q = "SELECT proposal_id FROM proposals WHERE status=?"
            args: tuple = (Reason.PENDING.value,)
            if coop_id is not None:
                q += " AND coop_id=?"
                args += (coop_id,)
            rows = self._db.execute(q + " ORDER BY coop_id, version, proposal_id", args).fetchall()
            return [w for (a,) in rows if (w := self._act_wire(a)) is not None]

    def digest(self) -> bytes:
        """SHA-256 over every coop head (with its count of valid acts and approvals) and every
        domain head. Equal digests: nothing to sync."""
        with self._lock:
            if self._digest is None:
                stats = {r[0]: (r[1], r[2]) for r in self._db.execute(
                    "SELECT coop_id, COUNT(*), SUM(json_array_length(approvers)) "
                    "FROM policy_versions GROUP BY coop_id")}
                coops = [[c, h.version, h.policy_hash, h.act_id, *stats.get(c, (0, 0))]
                         for c, h in sorted(self.heads().items())]
                domains = sorted([s.name, s.genesis_id, s.state_hash, s.seq]
                                 for s in self._domain_heads.values())
                self._digest = hashlib.sha256(canonical_cbor([coops, domains])).digest()
            return self._digest

    # --- maintenance --------------------------------------------------------------------

    def remove(self, coop_id: str) -> bool:
        """Forget a development-mode coop on this node (refused for a governed coop)."""
        def run() -> bool:
            if self._is_governed(coop_id) or self._db.execute(
                    "SELECT 1 FROM proposals WHERE coop_id=? AND domain IS NOT NULL LIMIT 1",
                    (coop_id,)).fetchone():
                raise GovernanceError(Reason.GOVERNED_COOP, f"{coop_id} is governed by a domain")
            ids = [r[0] for r in self._db.execute("SELECT proposal_id FROM proposals WHERE coop_id=?",
                                                  (coop_id,))]
            for i in ids:
                self._db.execute("DELETE FROM approvals WHERE subject_id=?", (i,))
            self._db.execute("DELETE FROM proposals WHERE coop_id=?", (coop_id,))
            self._db.execute("DELETE FROM policy_versions WHERE coop_id=?", (coop_id,))
            self._chains.pop(coop_id, None)
            log.info("governance.remove coop=%s acts=%d", coop_id, len(ids))
            return bool(ids)
        return self._tx(run)

    def prune(self, now_ms: int, grace_ms: int = 7 * 86_400_000) -> int:
        """Drop pending proposals expired more than ``grace_ms`` ago and stale orphan votes."""
        def run() -> int:
            ids = [r[0] for r in self._db.execute(
                "SELECT proposal_id FROM proposals WHERE status IN (?, ?) AND expires_at_ms IS NOT NULL "
                "AND expires_at_ms + ? < ?", (Reason.PENDING.value, Reason.EXPIRED.value, grace_ms, now_ms))]
            for i in ids:
                self._db.execute("DELETE FROM approvals WHERE subject_id=?", (i,))
                self._db.execute("DELETE FROM proposals WHERE proposal_id=?", (i,))
            cur = self._db.execute("DELETE FROM orphan_approvals WHERE received_at_ms + ? < ?",
                                   (grace_ms, now_ms))
            return len(ids) + cur.rowcount
        return self._tx(run)

    # --- helpers --------------------------------------------------------------------------

    def _reject(self, reason: str, *, act_id: str | None = None, version: int | None = None,
                notes: tuple[str, ...] = (), detail: str = "") -> ApplyResult:
        reason = str(reason)
        ACTS_REJECTED.labels(reason=reason).inc()
        log.info("governance.reject reason=%s id=%s detail=%s", reason, (act_id or "-")[:16], detail)
        return ApplyResult(accepted=False, reason=reason, version=version, act_id=act_id,
                           notes=tuple(notes), detail=detail)


def make_rollback_proposal(
    store: PolicyStore,
    coop_id: str,
    to_version: int,
    *,
    key: NodeKey,
    created_at_ms: int,
    expires_at_ms: int | None = None,
    effective_at_ms: int | None = None,
    reason: str = "",
) -> PolicyProposal:
    """A new version (head + 1) whose body is chain version ``to_version``'s.

    For a governed coop it is an ordinary proposal under the domain's head
    state and needs approvals like any other; for a development coop it is a
    local act signed by ``key``. Rolling a governed coop back to a body from
    its development days keeps the current governance domain in the body.
    """
    with store._lock:
        target = store.get(coop_id, to_version)
        tip = store.heads().get(coop_id)
        if target is None or tip is None:
            raise GovernanceError(Reason.VERSION_GAP, f"{coop_id} has no version {to_version}")
        domain = store.get(coop_id, tip.version).domain  # type: ignore[union-attr]
        body = target.policy.to_icn_dict()
        state = None
        if domain is not None:
            state = store.domain_state(domain)
            if state is None:  # pragma: no cover - a governed head implies a known domain
                raise GovernanceError(Reason.UNKNOWN_DOMAIN, domain)
            if expires_at_ms is None:
                raise GovernanceError(Reason.MALFORMED, "a governed rollback needs expires_at_ms")
            body["governance_domain"] = domain
    return PolicyProposal.create(
        key, body, version=tip.version + 1, parent_hash=tip.policy_hash, created_at_ms=created_at_ms,
        domain_state=state, expires_at_ms=expires_at_ms, effective_at_ms=effective_at_ms,
        reason=reason or f"rollback to version {to_version}")
