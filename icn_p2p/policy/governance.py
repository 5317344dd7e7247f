"""Governed policy updates: domains, signed proposals, approvals and the chain rule.

Pure and synchronous: no I/O, time is an argument. ``store.py`` keeps the
objects in SQLite and calls the two fold functions here
(``resolve_domain`` and ``resolve_policy_chain``) whenever its set of objects
grows. Both folds are functions of the *set* of objects they are given, never
of the order in which those objects arrived, so two nodes that end up holding
the same objects agree on every head and every history entry.

Objects (each has a stable id = hex SHA-256 of its canonical CBOR body, and a
``to_wire()`` / ``from_wire()`` pair of CBOR-safe dicts):

``DomainGenesis``
    A governance domain: name, sorted member ``did:key`` DIDs, threshold t,
    creation time, and an ``Approval`` from *every* founding member. The
    domain's identity is its genesis id. Several geneses may claim one name:
    a node that pins the name (``pinned={name: genesis_id}``) refuses the
    others (``unpinned_genesis``); a node that does not pin uses the valid
    genesis with the *lowest* id. That rule is deterministic but anyone can
    grind a lower id, so an unpinned domain is only as trustworthy as
    trust-on-first-use: production nodes pin their coops' domains.

``DomainChange``
    New members/threshold for a domain, naming its parent domain state
    (genesis id or previous change id) and ``seq`` = parent seq + 1, approved
    by a threshold of the *parent* state's members. Competing changes of one
    parent are resolved like policy acts (longer branch, then more approvals,
    then lowest id). The resulting ``DomainState`` chain is what policy acts
    are judged against.

``PolicyProposal`` / ``PolicyAct``
    A proposal names the coop, the domain *and the domain state* it was made
    under (``domain_state``), the new policy body (ICN dict), ``version`` =
    parent version + 1, ``parent_hash`` (content hash of the policy version it
    replaces, null for version 1), an optional ``effective_at_ms``, its
    ``expires_at_ms``, a reason, proposer and creation time, and the
    proposer's signature. An ``Approval`` is a member's signature over
    (proposal id, approver, signed timestamp) with a domain-separation
    prefix. The proposer's signature is itself an approval stamped
    ``created_at_ms`` and counts when the proposer is a member. A
    ``PolicyAct`` is a proposal plus approvals; it is valid with ``t``
    distinct member approvals (of the named domain state) and when the
    threshold time (the t-th earliest approval timestamp) is not after
    ``expires_at_ms``. Approvals of one proposal merge as a set, so the act
    id is the proposal id.

    Binding an act to a domain state keeps judgements stable: a later
    membership change does not rewrite history already accepted. A removed
    member is not a member of the new state, so their signature does not count
    for acts made under it; along one coop's chain the domain state an act
    names may never go back to an older one (``stale_domain_state``), and a
    branch that reached a newer domain state beats one that did not.

Local development mode: a proposal with ``domain`` null is a *local act*: the
proposer (a node's own key) alone sets the policy of a coop whose body has
``governance_domain`` null. Every node accepts local acts (a development mesh
trusts all its nodes; a store may refuse other nodes' local acts). Once a
coop's chain holds a governed version, local acts for it are refused
(``governed_coop``), and a governed coop never changes domain (a governed
act must name the domain of its parent version: ``domain_mismatch``).

Chain rule (``resolve_policy_chain``): valid acts form a tree by
(version - 1, parent_hash). From the roots (version 1) downwards, the child
chosen at each level is the one whose subtree ranks first by: newest domain
state reached in the subtree (seq), then subtree height (a late rival does
not undo history others already built on), then more approvals, then the
lowest act id. Losers are kept and reported ``superseded``; acts built on a
losing branch are ``parent_mismatch``; acts whose parent is unknown are
``version_gap`` (kept, they attach when the gap fills).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Iterable, Literal, Mapping, Sequence

import cbor2
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from icn_p2p.core.policy import CoopSchedulingPolicy
from icn_p2p.identity.keys import NodeKey, is_key_did, verify

__all__ = [
    "APPROVAL_CONTEXT",
    "Approval",
    "ActCandidate",
    "ChainResolution",
    "DomainAct",
    "DomainChange",
    "DomainGenesis",
    "DomainResolution",
    "DomainState",
    "GovernanceError",
    "PolicyAct",
    "PolicyProposal",
    "Reason",
    "StaticCheck",
    "Tally",
    "check_act",
    "check_domain_change",
    "check_genesis",
    "check_proposal",
    "content_id",
    "make_local_act",
    "resolve_domain",
    "resolve_policy_chain",
    "tally",
]

APPROVAL_CONTEXT = b"icn-p2p/governance/approval/v1\x00"

MAX_MEMBERS = 1024
MAX_APPROVALS = 2048
MAX_TEXT = 1024
MAX_BODY_BYTES = 256 * 1024
U64_MAX = 2**64 - 1


class Reason(StrEnum):
    """Stable reason codes (metrics labels and clients match on them)."""

    ACCEPTED = "accepted"
    PENDING = "pending"  # stored, waiting for approvals
    TOO_FEW_SIGNATURES = "too_few_signatures"
    NON_MEMBER_SIGNATURE = "non_member_signature"  # informational
    NON_MEMBER_PROPOSER = "non_member_proposer"  # pending proposals only come from members
    DUPLICATE_SIGNER = "duplicate_signer"
    BAD_SIGNATURE = "bad_signature"
    VERSION_GAP = "version_gap"
    PARENT_MISMATCH = "parent_mismatch"
    INVALID_POLICY = "invalid_policy"
    EXPIRED = "expired"
    UNKNOWN_DOMAIN = "unknown_domain"
    UNKNOWN_DOMAIN_STATE = "unknown_domain_state"
    STALE_DOMAIN_STATE = "stale_domain_state"
    UNPINNED_GENESIS = "unpinned_genesis"
    REPLAYED = "replayed"
    DOMAIN_MISMATCH = "domain_mismatch"
    GOVERNED_COOP = "governed_coop"
    FOREIGN_LOCAL = "foreign_local"
    SUPERSEDED = "superseded"
    UNKNOWN_PROPOSAL = "unknown_proposal"
    INVALID_DOMAIN = "invalid_domain"
    MALFORMED = "malformed"


#: Reasons after which the same object may succeed later, once the missing
#: domain objects or parents have arrived (the network layer retries / syncs).
RETRYABLE = frozenset({Reason.UNKNOWN_DOMAIN, Reason.UNKNOWN_DOMAIN_STATE, Reason.UNKNOWN_PROPOSAL})


class GovernanceError(ValueError):
    """Malformed or refused governance input, with a stable ``reason`` code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = str(reason)
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else str(reason))


# --- canonical ids --------------------------------------------------------------


def canonical_cbor(obj: Any) -> bytes:
    return cbor2.dumps(obj, canonical=True)


def content_id(obj: Any) -> str:
    """Hex SHA-256 of the canonical CBOR of ``obj``: the id of a signed body."""
    return hashlib.sha256(canonical_cbor(obj)).hexdigest()


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _hex64(v: Any, what: str) -> None:
    if not isinstance(v, str) or not _HEX64.match(v):
        raise ValueError(f"{what} must be 64 lowercase hex characters")


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def _parse(cls: type[BaseModel], data: Any, what: str) -> Any:
    """Strict validation of a wire dict; any problem is ``GovernanceError(malformed)``."""
    if not isinstance(data, Mapping):
        raise GovernanceError(Reason.MALFORMED, f"{what} must be a map")
    try:
        return cls.model_validate(dict(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        raise GovernanceError(Reason.MALFORMED, f"{what}: {loc}: {first.get('msg')}") from None
    except (TypeError, ValueError, RecursionError) as exc:  # pragma: no cover - defensive
        raise GovernanceError(Reason.MALFORMED, f"{what}: {exc}") from None


DidStr = Field(min_length=1, max_length=256)
Ms = Field(ge=0, le=U64_MAX)


# --- approvals --------------------------------------------------------------------


class Approval(_Model):
    """A signature by ``approver`` on ``proposal_id`` (any governance object id) at a time."""

    proposal_id: str
    approver: str = DidStr
    approved_at_ms: int = Ms
    signature: bytes = Field(min_length=64, max_length=64)

    @model_validator(mode="after")
    def _ids(self) -> "Approval":
        _hex64(self.proposal_id, "proposal_id")
        return self

    @staticmethod
    def message(proposal_id: str, approver: str, approved_at_ms: int) -> bytes:
        return APPROVAL_CONTEXT + canonical_cbor([proposal_id, approver, approved_at_ms])

    @classmethod
    def sign(cls, key: NodeKey, proposal_id: str, approved_at_ms: int) -> "Approval":
        sig = key.sign(cls.message(proposal_id, key.did, approved_at_ms))
        return cls(proposal_id=proposal_id, approver=key.did, approved_at_ms=approved_at_ms, signature=sig)

    def verify(self) -> bool:
        return verify(self.approver, self.message(self.proposal_id, self.approver, self.approved_at_ms),
                      self.signature)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_wire(cls, data: Any) -> "Approval":
        return _parse(cls, data, "approval")


def _approvals_from_wire(items: Any, what: str) -> tuple[Approval, ...]:
    if not isinstance(items, (list, tuple)):
        raise GovernanceError(Reason.MALFORMED, f"{what} must be a list")
    if len(items) > MAX_APPROVALS:
        raise GovernanceError(Reason.MALFORMED, f"{what}: more than {MAX_APPROVALS} approvals")
    return tuple(Approval.from_wire(a) for a in items)


@dataclass(frozen=True)
class Tally:
    """How a set of approvals counts against a member list."""

    valid: tuple[str, ...]  # distinct member approvers with good signatures, sorted
    non_members: tuple[str, ...]
    duplicates: tuple[str, ...]
    bad: tuple[str, ...]  # bad signature, other subject, or stamped before the proposal
    threshold_at_ms: int | None  # t-th earliest approval time among ``valid``; None below t
    times: Mapping[str, int] = field(default_factory=dict)  # approver -> earliest valid time

    def notes(self) -> tuple[str, ...]:
        out = []
        if self.non_members:
            out.append(Reason.NON_MEMBER_SIGNATURE.value)
        if self.duplicates:
            out.append(Reason.DUPLICATE_SIGNER.value)
        if self.bad:
            out.append(Reason.BAD_SIGNATURE.value)
        return tuple(out)

    def shortfall_reason(self) -> Reason:
        """Why the threshold was missed, most specific first."""
        if self.bad:
            return Reason.BAD_SIGNATURE
        if self.duplicates:
            return Reason.DUPLICATE_SIGNER
        return Reason.TOO_FEW_SIGNATURES


def tally(
    subject_id: str,
    approvals: Iterable[Approval | tuple[str, int]],
    members: Iterable[str],
    threshold: int,
    *,
    not_before_ms: int = 0,
    verified: bool = False,
) -> Tally:
    """Count approvals: each member once (its earliest valid time), non-members ignored.

    ``approvals`` are ``Approval`` objects, or ``(approver, time)`` pairs whose
    signatures were already verified (``verified=True``, the store's path).
    An approval stamped before ``not_before_ms`` (the proposal's creation) is
    treated as bad: nobody approves what did not exist yet.
    """
    member_set = set(members)
    times: dict[str, int] = {}
    seen: set[str] = set()
    non_members: set[str] = set()
    duplicates: set[str] = set()
    bad: set[str] = set()
    for a in approvals:
        if isinstance(a, Approval):
            who, at = a.approver, a.approved_at_ms
            ok = verified or (a.proposal_id == subject_id and a.verify())
        else:
            (who, at), ok = a, True
        if not ok or at < not_before_ms:
            bad.add(who)
            continue
        if who in seen:
            duplicates.add(who)
        seen.add(who)
        if who not in member_set:
            non_members.add(who)
            continue
        if who not in times or at < times[who]:
            times[who] = at
    ordered = sorted(times.values())
    at_threshold = ordered[threshold - 1] if 0 < threshold <= len(ordered) else None
    return Tally(
        valid=tuple(sorted(times)),
        non_members=tuple(sorted(non_members)),
        duplicates=tuple(sorted(duplicates)),
        bad=tuple(sorted(bad - set(times))),
        threshold_at_ms=at_threshold,
        times=times,
    )


# --- domains ------------------------------------------------------------------------


def _check_members(members: Sequence[str], threshold: int) -> None:
    if not members:
        raise ValueError("a domain has at least one member")
    if len(members) > MAX_MEMBERS:
        raise ValueError(f"a domain has at most {MAX_MEMBERS} members")
    if list(members) != sorted(set(members)):
        raise ValueError("members must be sorted and distinct")
    for m in members:
        if not is_key_did(m):
            raise ValueError(f"member {m!r} is not a did:key DID")
    if not 1 <= threshold <= len(members):
        raise ValueError("threshold must be between 1 and the number of members")


class DomainState(_Model):
    """A domain's membership at one point of its chain (derived, not signed itself)."""

    name: str
    genesis_id: str
    state_hash: str  # genesis id, or the id of the change that produced this state
    seq: int
    members: tuple[str, ...]
    threshold: int
    created_at_ms: int

    def is_member(self, did: str) -> bool:
        return did in self.members


class DomainGenesis(_Model):
    """The founding act of a governance domain; every founding member signs it."""

    type: Literal["icn.domain.genesis/1"] = "icn.domain.genesis/1"
    name: str = Field(min_length=1, max_length=256)
    members: tuple[str, ...]
    threshold: int = Field(ge=1)
    created_at_ms: int = Ms
    signatures: tuple[Approval, ...] = ()

    _id: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _shape(self) -> "DomainGenesis":
        _check_members(self.members, self.threshold)
        if len(self.signatures) > MAX_APPROVALS:
            raise ValueError("too many signatures")
        return self

    def model_post_init(self, __context: Any) -> None:
        self._id = content_id(self.body())

    def body(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "members": list(self.members),
                "threshold": self.threshold, "created_at_ms": self.created_at_ms}

    @property
    def genesis_id(self) -> str:
        return self._id

    @classmethod
    def create(cls, name: str, keys: Sequence[NodeKey], threshold: int, created_at_ms: int,
               extra_members: Sequence[str] = ()) -> "DomainGenesis":
        """A genesis founded by ``keys`` (all sign). ``extra_members`` cannot sign, so stay empty normally."""
        members = tuple(sorted({k.did for k in keys} | set(extra_members)))
        unsigned = cls(name=name, members=members, threshold=threshold, created_at_ms=created_at_ms)
        sigs = tuple(Approval.sign(k, unsigned.genesis_id, created_at_ms) for k in keys)
        return unsigned.model_copy(update={"signatures": sigs})

    def state(self) -> DomainState:
        return DomainState(name=self.name, genesis_id=self.genesis_id, state_hash=self.genesis_id,
                           seq=0, members=self.members, threshold=self.threshold,
                           created_at_ms=self.created_at_ms)

    def to_wire(self) -> dict[str, Any]:
        return {**self.body(), "signatures": [a.to_wire() for a in self.signatures]}

    @classmethod
    def from_wire(cls, data: Any) -> "DomainGenesis":
        if not isinstance(data, Mapping):
            raise GovernanceError(Reason.MALFORMED, "genesis must be a map")
        d = dict(data)
        sigs = _approvals_from_wire(d.pop("signatures", []), "genesis.signatures")
        if isinstance(d.get("members"), list):
            d["members"] = tuple(d["members"])
        return _parse(cls, {**d, "signatures": sigs}, "genesis")


def check_genesis(genesis: DomainGenesis, pinned: Mapping[str, str] | None = None) -> Reason | None:
    """None when every founding member signed and the pin (if any) names this genesis."""
    pin = (pinned or {}).get(genesis.name)
    if pin is not None and pin != genesis.genesis_id:
        return Reason.UNPINNED_GENESIS
    t = tally(genesis.genesis_id, genesis.signatures, genesis.members, len(genesis.members))
    if t.threshold_at_ms is None:
        return t.shortfall_reason()
    return None


class DomainChange(_Model):
    """A proposed new member list / threshold for a domain, signed by its proposer."""

    type: Literal["icn.domain.change/1"] = "icn.domain.change/1"
    domain: str = Field(min_length=1, max_length=256)
    genesis_id: str
    parent: str  # state hash this change replaces
    seq: int = Field(ge=1)
    members: tuple[str, ...]
    threshold: int = Field(ge=1)
    created_at_ms: int = Ms
    expires_at_ms: int = Ms
    reason: str = Field(default="", max_length=MAX_TEXT)
    proposer: str = DidStr
    signature: bytes = Field(min_length=64, max_length=64)

    _id: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _shape(self) -> "DomainChange":
        _hex64(self.genesis_id, "genesis_id")
        _hex64(self.parent, "parent")
        _check_members(self.members, self.threshold)
        return self

    def model_post_init(self, __context: Any) -> None:
        self._id = content_id(self.body())

    def body(self) -> dict[str, Any]:
        d = self.model_dump(exclude={"signature"})
        d["members"] = list(self.members)
        return d

    @property
    def change_id(self) -> str:
        return self._id

    @classmethod
    def create(cls, key: NodeKey, parent: DomainState, members: Sequence[str], threshold: int,
               created_at_ms: int, expires_at_ms: int, reason: str = "") -> "DomainChange":
        fields = dict(domain=parent.name, genesis_id=parent.genesis_id, parent=parent.state_hash,
                      seq=parent.seq + 1, members=tuple(sorted(set(members))), threshold=threshold,
                      created_at_ms=created_at_ms, expires_at_ms=expires_at_ms, reason=reason,
                      proposer=key.did)
        body_id = content_id({"type": "icn.domain.change/1", **fields,
                              "members": list(fields["members"])})
        sig = key.sign(Approval.message(body_id, key.did, created_at_ms))
        return cls(**fields, signature=sig)

    def proposer_approval(self) -> Approval:
        return Approval(proposal_id=self.change_id, approver=self.proposer,
                        approved_at_ms=self.created_at_ms, signature=self.signature)

    def state(self) -> DomainState:
        return DomainState(name=self.domain, genesis_id=self.genesis_id, state_hash=self.change_id,
                           seq=self.seq, members=self.members, threshold=self.threshold,
                           created_at_ms=self.created_at_ms)

    def to_wire(self) -> dict[str, Any]:
        return {**self.body(), "signature": self.signature}

    @classmethod
    def from_wire(cls, data: Any) -> "DomainChange":
        if not isinstance(data, Mapping):
            raise GovernanceError(Reason.MALFORMED, "domain change must be a map")
        d = dict(data)
        if isinstance(d.get("members"), list):
            d["members"] = tuple(d["members"])
        return _parse(cls, d, "domain change")


class DomainAct(_Model):
    """A domain change with the approvals gathered for it."""

    change: DomainChange
    approvals: tuple[Approval, ...] = ()

    @property
    def act_id(self) -> str:
        return self.change.change_id

    def all_approvals(self) -> tuple[Approval, ...]:
        return (self.change.proposer_approval(), *self.approvals)

    def to_wire(self) -> dict[str, Any]:
        return {"type": "icn.domain.act/1", "change": self.change.to_wire(),
                "approvals": [a.to_wire() for a in self.approvals]}

    @classmethod
    def from_wire(cls, data: Any) -> "DomainAct":
        if not isinstance(data, Mapping) or data.get("type") != "icn.domain.act/1":
            raise GovernanceError(Reason.MALFORMED, "not a domain act")
        if set(data) - {"type", "change", "approvals"}:
            raise GovernanceError(Reason.MALFORMED, "domain act: unknown fields")
        return cls(change=DomainChange.from_wire(data.get("change")),
                   approvals=_approvals_from_wire(data.get("approvals", []), "domain act.approvals"))


def check_domain_change(change: DomainChange) -> Reason | None:
    """Checks that need no other object: the proposer's signature."""
    if not change.proposer_approval().verify():
        return Reason.BAD_SIGNATURE
    return None


@dataclass(frozen=True)
class DomainResolution:
    """A domain's chosen chain of states and the status of every change considered."""

    name: str
    genesis_id: str | None
    states: tuple[DomainState, ...]  # seq 0..n along the chosen chain
    statuses: Mapping[str, str]  # change id -> accepted / superseded / reason
    rival_geneses: tuple[str, ...] = ()

    @property
    def head(self) -> DomainState | None:
        return self.states[-1] if self.states else None


def resolve_domain(
    name: str,
    geneses: Iterable[DomainGenesis],
    changes: Iterable[tuple[DomainChange, Iterable[tuple[str, int]]]],
    pinned: str | None = None,
) -> DomainResolution:
    """The chosen state chain of domain ``name``.

    ``geneses`` must already be checked (``check_genesis``); ``changes`` come
    with their signature-verified approvals as ``(approver, time)`` pairs (the
    proposer's own included).
    """
    valid = sorted((g for g in geneses if g.name == name), key=lambda g: g.genesis_id)
    ids = [g.genesis_id for g in valid]
    if pinned is not None:
        valid = [g for g in valid if g.genesis_id == pinned]
    if not valid:
        return DomainResolution(name, None, (), {}, tuple(ids))
    genesis = valid[0]
    rivals = tuple(i for i in ids if i != genesis.genesis_id)

    by_parent: dict[str, list[tuple[DomainChange, Tally]]] = {}
    statuses: dict[str, str] = {}
    for ch, approvals in changes:
        if ch.domain != name or ch.genesis_id != genesis.genesis_id:
            statuses[ch.change_id] = Reason.UNKNOWN_DOMAIN.value
            continue
        by_parent.setdefault(ch.parent, []).append((ch, approvals))  # type: ignore[arg-type]

    # Validity of a change depends only on its parent state, which is fixed by
    # the parent object itself: evaluate top-down over the whole tree, then
    # compute subtree heights bottom-up.
    nodes: dict[str, tuple[DomainChange, Tally]] = {}
    children: dict[str, list[str]] = {}
    frontier = [genesis.state()]
    while frontier:
        parent = frontier.pop()
        for ch, approvals in by_parent.get(parent.state_hash, []):
            if ch.change_id in nodes:
                continue
            if ch.seq != parent.seq + 1:
                statuses[ch.change_id] = Reason.VERSION_GAP.value
                continue
            t = tally(ch.change_id, approvals, parent.members, parent.threshold,
                      not_before_ms=ch.created_at_ms, verified=True)
            if t.threshold_at_ms is None:
                statuses[ch.change_id] = Reason.PENDING.value
                continue
            if t.threshold_at_ms > ch.expires_at_ms:
                statuses[ch.change_id] = Reason.EXPIRED.value
                continue
            nodes[ch.change_id] = (ch, t)
            children.setdefault(parent.state_hash, []).append(ch.change_id)
            frontier.append(ch.state())
    for parent_hash, items in by_parent.items():
        for ch, _ in items:
            statuses.setdefault(ch.change_id, Reason.PARENT_MISMATCH.value)

    height: dict[str, int] = {}
    for cid in sorted(nodes, key=lambda c: -nodes[c][0].seq):
        height[cid] = 1 + max((height[k] for k in children.get(cid, [])), default=0)

    states = [genesis.state()]
    while True:
        kids = children.get(states[-1].state_hash, [])
        if not kids:
            break
        best = min(kids, key=lambda c: (-height[c], -len(nodes[c][1].valid), c))
        for k in kids:
            statuses[k] = Reason.SUPERSEDED.value
        statuses[best] = Reason.ACCEPTED.value
        states.append(nodes[best][0].state())
    chain = {s.state_hash for s in states}
    for cid, (ch, _) in nodes.items():
        if statuses.get(cid) != Reason.ACCEPTED and ch.parent not in chain:
            statuses[cid] = Reason.PARENT_MISMATCH.value
    return DomainResolution(name, genesis.genesis_id, tuple(states), statuses, rivals)


# --- policy proposals and acts ------------------------------------------------------------


class PolicyProposal(_Model):
    """A signed proposal for a coop's next policy version (``domain`` null: a local act)."""

    type: Literal["icn.policy.proposal/1"] = "icn.policy.proposal/1"
    coop_id: str = Field(min_length=1, max_length=256)
    domain: str | None = Field(default=None, min_length=1, max_length=256)
    domain_state: str | None = None
    policy: dict[str, Any]
    version: int = Field(ge=1, le=U64_MAX)
    parent_hash: str | None = None
    effective_at_ms: int | None = Field(default=None, ge=0, le=U64_MAX)
    expires_at_ms: int | None = Field(default=None, ge=0, le=U64_MAX)
    reason: str = Field(default="", max_length=MAX_TEXT)
    proposer: str = DidStr
    created_at_ms: int = Ms
    signature: bytes = Field(min_length=64, max_length=64)

    _id: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _shape(self) -> "PolicyProposal":
        if self.parent_hash is not None:
            _hex64(self.parent_hash, "parent_hash")
        if self.domain is None:
            if self.domain_state is not None:
                raise ValueError("a local act names no domain state")
        else:
            if self.domain_state is None:
                raise ValueError("a governed proposal names the domain state it was made under")
            _hex64(self.domain_state, "domain_state")
            if self.expires_at_ms is None:
                raise ValueError("a governed proposal has expires_at_ms")
        return self

    def model_post_init(self, __context: Any) -> None:
        body = self.body()
        if len(canonical_cbor(body)) > MAX_BODY_BYTES:
            raise ValueError(f"proposal body larger than {MAX_BODY_BYTES} bytes")
        self._id = content_id(body)

    def body(self) -> dict[str, Any]:
        return self.model_dump(exclude={"signature"})

    @property
    def proposal_id(self) -> str:
        return self._id

    @property
    def mode(self) -> str:
        return "local" if self.domain is None else "governed"

    @classmethod
    def create(
        cls,
        key: NodeKey,
        policy: CoopSchedulingPolicy | Mapping[str, Any],
        *,
        version: int,
        parent_hash: str | None,
        created_at_ms: int,
        domain_state: DomainState | None = None,
        expires_at_ms: int | None = None,
        effective_at_ms: int | None = None,
        reason: str = "",
        coop_id: str | None = None,
    ) -> "PolicyProposal":
        """Build and sign a proposal; ``domain_state`` None makes a local (development) act.

        A dict body is taken as given (it is checked when the act is judged);
        ``coop_id`` defaults to the body's."""
        body = policy.to_icn_dict() if isinstance(policy, CoopSchedulingPolicy) else dict(policy)
        fields = dict(
            coop_id=coop_id if coop_id is not None else body.get("coop_id"), domain=domain_state.name if domain_state else None,
            domain_state=domain_state.state_hash if domain_state else None, policy=body,
            version=version, parent_hash=parent_hash, effective_at_ms=effective_at_ms,
            expires_at_ms=expires_at_ms, reason=reason, proposer=key.did, created_at_ms=created_at_ms,
        )
        unsigned = cls.model_construct(**fields, type="icn.policy.proposal/1", signature=b"")
        pid = content_id(unsigned.body())
        return cls(**fields, signature=key.sign(Approval.message(pid, key.did, created_at_ms)))

    def proposer_approval(self) -> Approval:
        return Approval(proposal_id=self.proposal_id, approver=self.proposer,
                        approved_at_ms=self.created_at_ms, signature=self.signature)

    def approve(self, key: NodeKey, at_ms: int) -> Approval:
        return Approval.sign(key, self.proposal_id, at_ms)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_wire(cls, data: Any) -> "PolicyProposal":
        return _parse(cls, data, "proposal")


class PolicyAct(_Model):
    """A proposal with its approvals: what is applied, gossiped and synced."""

    proposal: PolicyProposal
    approvals: tuple[Approval, ...] = ()

    @property
    def act_id(self) -> str:
        return self.proposal.proposal_id

    @property
    def mode(self) -> str:
        return self.proposal.mode

    def all_approvals(self) -> tuple[Approval, ...]:
        return (self.proposal.proposer_approval(), *self.approvals)

    def to_wire(self) -> dict[str, Any]:
        return {"type": "icn.policy.act/1", "proposal": self.proposal.to_wire(),
                "approvals": [a.to_wire() for a in self.approvals]}

    @classmethod
    def from_wire(cls, data: Any) -> "PolicyAct":
        if not isinstance(data, Mapping) or data.get("type") != "icn.policy.act/1":
            raise GovernanceError(Reason.MALFORMED, "not a policy act")
        if set(data) - {"type", "proposal", "approvals"}:
            raise GovernanceError(Reason.MALFORMED, "policy act: unknown fields")
        return cls(proposal=PolicyProposal.from_wire(data.get("proposal")),
                   approvals=_approvals_from_wire(data.get("approvals", []), "policy act.approvals"))


def make_local_act(key: NodeKey, policy: CoopSchedulingPolicy | Mapping[str, Any], *, version: int,
                   parent_hash: str | None, created_at_ms: int, effective_at_ms: int | None = None,
                   reason: str = "") -> PolicyAct:
    """A development-mode act: the node's own key sets a coop with no governance domain."""
    p = PolicyProposal.create(key, policy, version=version, parent_hash=parent_hash,
                              created_at_ms=created_at_ms, effective_at_ms=effective_at_ms,
                              reason=reason)
    return PolicyAct(proposal=p)


@dataclass(frozen=True)
class StaticCheck:
    """Outcome of the checks that need nothing but the proposal itself."""

    reason: Reason | None
    policy: CoopSchedulingPolicy | None = None
    detail: str = ""


def check_proposal(p: PolicyProposal) -> StaticCheck:
    """Proposer signature, policy body, coop and domain agreement, version/parent shape."""
    if not p.proposer_approval().verify():
        return StaticCheck(Reason.BAD_SIGNATURE, detail="proposer signature does not verify")
    try:
        policy = CoopSchedulingPolicy.from_dict(p.policy)
    except (ValidationError, ValueError, TypeError) as exc:
        return StaticCheck(Reason.INVALID_POLICY, detail=str(exc).splitlines()[0])
    if policy.coop_id != p.coop_id:
        return StaticCheck(Reason.INVALID_POLICY, detail="policy coop_id differs from the proposal's")
    if policy.governance_domain != p.domain:
        return StaticCheck(Reason.DOMAIN_MISMATCH,
                           detail=f"policy governance_domain {policy.governance_domain!r} "
                                  f"but proposal domain {p.domain!r}")
    if p.version == 1 and p.parent_hash is not None:
        return StaticCheck(Reason.PARENT_MISMATCH, detail="version 1 has no parent")
    if p.version > 1 and p.parent_hash is None:
        return StaticCheck(Reason.VERSION_GAP, detail=f"version {p.version} names no parent")
    return StaticCheck(None, policy)


@dataclass(frozen=True)
class ActVerdict:
    reason: Reason  # ACCEPTED when valid
    tally: Tally | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason == Reason.ACCEPTED


def check_act(act: PolicyAct, state: DomainState | None, *, parent_version: int | None = None,
              parent_hash: str | None = None) -> ActVerdict:
    """Judge one act on its own against a domain state and the version it should follow.

    ``parent_version``/``parent_hash`` describe the coop's current head (None:
    no version yet). The store does the same checks through the chain fold,
    which also settles conflicts; this function is the single-act view.
    """
    static = check_proposal(act.proposal)
    if static.reason is not None:
        return ActVerdict(static.reason, detail=static.detail)
    p = act.proposal
    expected = (parent_version or 0) + 1
    if p.version < expected:
        return ActVerdict(Reason.REPLAYED, detail=f"version {p.version} is not above {parent_version}")
    if p.version > expected:
        return ActVerdict(Reason.VERSION_GAP, detail=f"version {p.version} after {parent_version}")
    if p.parent_hash != parent_hash:
        return ActVerdict(Reason.PARENT_MISMATCH)
    if p.domain is None:
        return ActVerdict(Reason.ACCEPTED)
    if state is None or state.name != p.domain:
        return ActVerdict(Reason.UNKNOWN_DOMAIN)
    if state.state_hash != p.domain_state:
        return ActVerdict(Reason.UNKNOWN_DOMAIN_STATE)
    t = tally(p.proposal_id, act.all_approvals(), state.members, state.threshold,
              not_before_ms=p.created_at_ms)
    if t.threshold_at_ms is None:
        return ActVerdict(t.shortfall_reason(), t)
    if p.expires_at_ms is not None and t.threshold_at_ms > p.expires_at_ms:
        return ActVerdict(Reason.EXPIRED, t)
    return ActVerdict(Reason.ACCEPTED, t)


# --- the chain fold ---------------------------------------------------------------------


@dataclass(frozen=True)
class ActCandidate:
    """What the chain fold needs to know about one stored, statically valid proposal."""

    act_id: str
    coop_id: str
    version: int
    parent_hash: str | None
    policy_hash: str
    domain: str | None  # None: local act
    domain_state: str | None
    proposer: str
    created_at_ms: int
    expires_at_ms: int | None
    approvals: tuple[tuple[str, int], ...]  # verified (approver, time), proposer's included

    @property
    def mode(self) -> str:
        return "local" if self.domain is None else "governed"


@dataclass(frozen=True)
class Judged:
    cand: ActCandidate
    tally: Tally | None
    domain_seq: int  # -1 for local acts

    @property
    def approvers(self) -> tuple[str, ...]:
        return self.tally.valid if self.tally else (self.cand.proposer,)


@dataclass(frozen=True)
class ChainResolution:
    """A coop's chosen chain and what became of every other candidate."""

    chain: tuple[Judged, ...]  # version 1..n
    statuses: Mapping[str, str]  # act id -> accepted / superseded / pending / reason
    judged: Mapping[str, Judged]  # threshold-valid acts (chain and off-chain)

    @property
    def governed(self) -> bool:
        return any(j.cand.domain is not None for j in self.chain)


def resolve_policy_chain(
    candidates: Iterable[ActCandidate],
    states: Mapping[str, DomainState],
    *,
    coop_domain: str | None = None,
) -> ChainResolution:
    """Choose one coop's chain from its candidate acts (see the module docstring).

    ``states`` maps every state hash on the *chosen* chains of the known
    domains to its ``DomainState``. ``coop_domain`` (from configuration)
    restricts governed acts to one domain name.
    """
    statuses: dict[str, str] = {}
    judged: dict[str, Judged] = {}
    for c in candidates:
        if c.domain is None:
            judged[c.act_id] = Judged(c, None, -1)
            continue
        if coop_domain is not None and c.domain != coop_domain:
            statuses[c.act_id] = Reason.DOMAIN_MISMATCH.value
            continue
        st = states.get(c.domain_state or "")
        if st is None or st.name != c.domain:
            known = any(s.name == c.domain for s in states.values())
            statuses[c.act_id] = (Reason.UNKNOWN_DOMAIN_STATE if known else Reason.UNKNOWN_DOMAIN).value
            continue
        t = tally(c.act_id, c.approvals, st.members, st.threshold, not_before_ms=c.created_at_ms,
                  verified=True)
        if t.threshold_at_ms is None:
            statuses[c.act_id] = Reason.PENDING.value
            continue
        if c.expires_at_ms is not None and t.threshold_at_ms > c.expires_at_ms:
            statuses[c.act_id] = Reason.EXPIRED.value
            continue
        judged[c.act_id] = Judged(c, t, st.seq)

    def edge_ok(parent: Judged, child: Judged) -> str | None:
        pc, cc = parent.cand, child.cand
        if pc.domain is not None:
            if cc.domain is None:
                return Reason.GOVERNED_COOP.value
            if cc.domain != pc.domain:
                return Reason.DOMAIN_MISMATCH.value
            if child.domain_seq < parent.domain_seq:
                return Reason.STALE_DOMAIN_STATE.value
        return None

    by_parent: dict[tuple[int, str | None], list[Judged]] = {}
    for j in judged.values():
        by_parent.setdefault((j.cand.version - 1, j.cand.parent_hash), []).append(j)

    def kids(j: Judged) -> list[Judged]:
        return [k for k in by_parent.get((j.cand.version, j.cand.policy_hash), [])
                if edge_ok(j, k) is None]

    # subtree rank, bottom-up by version
    height: dict[str, int] = {}
    newest: dict[str, int] = {}
    for j in sorted(judged.values(), key=lambda j: -j.cand.version):
        ks = kids(j)
        height[j.cand.act_id] = 1 + max((height[k.cand.act_id] for k in ks), default=0)
        newest[j.cand.act_id] = max([j.domain_seq, *(newest[k.cand.act_id] for k in ks)])

    def rank(j: Judged) -> tuple:
        a = j.cand.act_id
        return (-newest[a], -height[a], -len(j.approvers), a)

    chain: list[Judged] = []
    level = by_parent.get((0, None), [])
    while level:
        best = min(level, key=rank)
        chain.append(best)
        level = kids(best)

    on_chain = {j.cand.act_id for j in chain}
    chain_at = {j.cand.version: j for j in chain}
    governed_from = next((j.cand.version for j in chain if j.cand.domain is not None), None)
    for a, j in judged.items():
        c = j.cand
        if a in on_chain:
            statuses[a] = Reason.ACCEPTED.value
            continue
        if c.domain is None and governed_from is not None:
            statuses[a] = Reason.GOVERNED_COOP.value
            continue
        parent = chain_at.get(c.version - 1)
        if c.version == 1 or (parent is not None and parent.cand.policy_hash == c.parent_hash):
            bad_edge = edge_ok(parent, j) if parent is not None else None
            statuses[a] = bad_edge or Reason.SUPERSEDED.value
        elif parent is not None or any(k.cand.version == c.version - 1 for k in judged.values()):
            statuses[a] = Reason.PARENT_MISMATCH.value
        else:
            statuses[a] = Reason.VERSION_GAP.value
    return ChainResolution(tuple(chain), statuses, judged)
