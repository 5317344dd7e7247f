"""The node's replicated state as sync sources and gossip message types.

These adapters are where the network's generic plumbing meets the stores:
they name the envelope types (``policy.act``, ``usage.entry``,
``usage.entries``), give each a
schema hook (structure only: signatures inside the payload and every business
rule are the store's job at ingest) and expose the stores' digests and deltas
to the sync protocol. All methods are synchronous (SQLite); callers run them
in worker threads.
"""

from __future__ import annotations

from typing import Any

from icn_p2p.core.clock import SystemClock
from icn_p2p.net.gossip import TOPIC_POLICY, USAGE_TOPIC_FAMILY, USAGE_TOPIC_PREFIX
from icn_p2p.policy.governance import GovernanceError, PolicyAct
from icn_p2p.policy.store import PolicyStore
from icn_p2p.usage.crdt import MAX_COUNTER, SignedUsageEntry, UsageDelta, UsageRejection
from icn_p2p.usage.store import UsageStore
from icn_p2p.wire import Envelope, Reason

POLICY_ACT = "policy.act"
USAGE_ENTRY = "usage.entry"
#: Gossip of a node's own changed usage entries, many to a message: a member's
#: entry changes with every task, and one message per entry would cost every
#: node of the coop its transport and validation work per change.
USAGE_ENTRIES = "usage.entries"
MAX_USAGE_BATCH = 256
POLICY_SCOPE = ""


def policy_act_schema(env: Envelope, topic: str) -> Reason | None:
    try:
        PolicyAct.from_wire(env.payload)
    except (GovernanceError, Exception):
        return Reason.BAD_SCHEMA
    return None


def usage_entry_schema(env: Envelope, topic: str) -> Reason | None:
    try:
        entry = SignedUsageEntry.from_wire(env.payload)
    except (UsageRejection, Exception):
        return Reason.BAD_SCHEMA
    if topic and topic != USAGE_TOPIC_PREFIX + entry.entry.coop_id:
        return Reason.WRONG_TOPIC  # a coop's usage travels only on its own topic
    return None


def usage_entries_schema(env: Envelope, topic: str) -> Reason | None:
    """``{coop_id, entries: [signed entry, ...], since?, through?}``: the signer's own
    entries for the topic's coop.

    Each node gossips only what it wrote, so every entry's writer is the
    envelope's signer, whose signature the router has checked before this
    runs; the entries' own signatures are checked when they are merged.
    ``since`` and ``through`` (both or neither) are the signer's word that
    these are all its entries changed after its version ``since``, up to
    ``through``: a receiver complete through ``since`` is then complete through
    ``through`` (see :func:`usage_batch`), even though the versions an entry
    passed through between two gossips never travel.
    """
    p = env.payload
    if not isinstance(p, dict) or not {"coop_id", "entries"} <= set(p) <= _USAGE_BATCH_KEYS:
        return Reason.BAD_SCHEMA
    coop, items = p["coop_id"], p["entries"]
    if not isinstance(coop, str) or not isinstance(items, list) or not 1 <= len(items) <= MAX_USAGE_BATCH:
        return Reason.BAD_SCHEMA
    if topic and topic != USAGE_TOPIC_PREFIX + coop:
        return Reason.WRONG_TOPIC
    span = _span(p)
    if span is False:
        return Reason.BAD_SCHEMA
    for item in items:
        try:
            entry = SignedUsageEntry.from_wire(item).entry
        except (UsageRejection, Exception):
            return Reason.BAD_SCHEMA
        if entry.coop_id != coop:
            return Reason.WRONG_TOPIC
        if entry.writer != env.signer:
            return Reason.BAD_SIGNER
        if span is not None and not span[0] < entry.version <= span[1]:
            return Reason.BAD_SCHEMA
    return None


_USAGE_BATCH_KEYS = {"coop_id", "entries", "since", "through"}


def _span(p: dict) -> tuple[int, int] | None | bool:
    """``(since, through)``, None when the batch vouches for nothing, False when malformed."""
    if "since" not in p and "through" not in p:
        return None
    since, through = p.get("since"), p.get("through")
    if type(since) is not int or type(through) is not int or not 0 <= since < through <= MAX_COUNTER:
        return False
    return since, through


def usage_batch(env: Envelope) -> list[Any] | UsageDelta:
    """A schema-checked ``usage.entries`` payload as what the store merges: the
    entries, or a delta when the signer vouched for its span of versions."""
    p = env.payload
    span = _span(p)
    if not span:
        return p["entries"]
    return UsageDelta(p["coop_id"], {env.signer: span[0]}, {env.signer: span[1]}, p["entries"])


class PolicySource:
    """Every governed or local policy act, one scope."""

    name = "policy"
    item_type = POLICY_ACT
    topic = TOPIC_POLICY

    def __init__(self, store: PolicyStore, *, clock_ms=None) -> None:
        self.store = store
        self.clock_ms = clock_ms or SystemClock().now_ms

    def scopes(self) -> list[str]:
        return [POLICY_SCOPE]

    def digest(self, scope: str) -> bytes:
        return self.store.digest()

    def summary(self, scope: str) -> Any:
        # coop -> [head version, approvals held at each version would be finer;
        # the head plus the full act list is small enough for policy traffic]
        return {c: [h.version, h.act_id] for c, h in self.store.heads().items()}

    def items_since(self, scope: str, peer_summary: Any) -> list[Any]:
        theirs = peer_summary if isinstance(peer_summary, dict) else {}
        out: list[Any] = []
        for coop, head in self.store.heads().items():
            peer_head = theirs.get(coop)
            if isinstance(peer_head, list) and len(peer_head) == 2 and peer_head[1] == head.act_id:
                continue  # same head; digests may still differ by approvals: sent below
            out.extend(self.store.acts_since(coop, 0))
        if not out:
            # Same heads but different digests: approvals or rival acts differ.
            for coop in self.store.heads():
                out.extend(self.store.acts_since(coop, 0))
        out.extend(self.store.pending())
        return out

    def ingest(self, scope: str, items: list[Any]) -> int:
        accepted = 0
        now = self.clock_ms()
        for item in items:
            if self.store.apply_act(item, now).accepted:
                accepted += 1
        return accepted


class UsageSource:
    """Replicated usage, one scope per coop this node serves."""

    name = "usage"
    item_type = USAGE_ENTRY
    topic = USAGE_TOPIC_FAMILY

    def __init__(self, store: UsageStore, coops: list[str]) -> None:
        self.store = store
        self.coops = list(coops)

    def scopes(self) -> list[str]:
        return list(self.coops)

    def digest(self, scope: str) -> bytes:
        return self.store.digest(scope)

    def summary(self, scope: str) -> Any:
        return self.store.version_vector(scope)

    def items_since(self, scope: str, peer_summary: Any) -> list[Any]:
        if scope not in self.coops:
            return []
        vv = peer_summary if isinstance(peer_summary, dict) else {}
        vv = {k: v for k, v in vv.items() if isinstance(k, str) and isinstance(v, int)}
        return [e.to_wire() for e in self.store.delta_since(scope, vv)]

    def ingest(self, scope: str, items: list[Any]) -> int:
        good = []
        for item in items:
            try:
                if SignedUsageEntry.from_wire(item).entry.coop_id == scope:
                    good.append(item)
            except Exception:
                continue
        return self.store.merge(good).accepted if good else 0
