"""Governance on the mesh: domains, proposals and votes travel to every node.

The policy store judges everything (signatures, membership, threshold,
versions, tie-breaks); this module only moves the signed objects:

- ``policy.act`` (proposals with the approvals a node holds) already travels
  on ``icn/policy/1``; a proposal below threshold is stored as pending.
- ``governance.approval``: one member's vote, on ``icn/policy/1``.
- ``governance.domain``: a domain's genesis and its membership changes (an
  ``export_domain`` bundle), on ``icn/policy/1``.
- The ``domains`` sync source repairs what gossip lost: a node that joins
  late learns every domain, then the acts judged under it.

Every node applies what it receives through its own store, so an act signed
by outsiders takes effect nowhere, and the origin is not trusted for it.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

from icn_p2p.core.clock import SystemClock
from icn_p2p.core.policy import CoopSchedulingPolicy
from icn_p2p.net.gossip import TOPIC_POLICY, Delivery
from icn_p2p.policy.governance import (
    Approval,
    DomainGenesis,
    GovernanceError,
    PolicyAct,
    PolicyProposal,
)
from icn_p2p.policy.store import ApplyResult, PolicyStore, make_rollback_proposal
from icn_p2p.wire import Envelope, Reason

from .sources import POLICY_ACT

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger(__name__)

APPROVAL = "governance.approval"
DOMAIN = "governance.domain"
DEFAULT_PROPOSAL_TTL_MS = 7 * 24 * 3600 * 1000


def approval_schema(env: Envelope, topic: str) -> Reason | None:
    try:
        Approval.from_wire(env.payload)
    except Exception:
        return Reason.BAD_SCHEMA
    return None


def domain_schema(env: Envelope, topic: str) -> Reason | None:
    p = env.payload
    if not isinstance(p, dict) or p.get("type") != "icn.domain.export/1":
        return Reason.BAD_SCHEMA
    return None


class DomainSource:
    """Governance domains as a sync source: one scope, a bundle per domain."""

    name = "domains"
    item_type = DOMAIN
    topic = TOPIC_POLICY

    def __init__(self, store: PolicyStore, *, clock_ms=None) -> None:
        self.store = store
        self.clock_ms = clock_ms or SystemClock().now_ms

    def scopes(self) -> list[str]:
        return [""]

    def summary(self, scope: str) -> Any:
        return {name: [s.seq, s.state_hash] for name, s in sorted(self.store.domain_states().items())}

    def digest(self, scope: str) -> bytes:
        flat = repr(sorted((k, tuple(v)) for k, v in self.summary(scope).items())).encode()
        return hashlib.sha256(flat).digest()[:16]

    def items_since(self, scope: str, peer_summary: Any) -> list[Any]:
        theirs = peer_summary if isinstance(peer_summary, dict) else {}
        out = []
        for name, (seq, state) in self.summary(scope).items():
            if theirs.get(name) != [seq, state]:
                export = self.store.export_domain(name)
                if export is not None:
                    out.append(export)
        return out

    def ingest(self, scope: str, items: list[Any]) -> int:
        accepted = 0
        for item in items:
            results = self.store.import_domain(item, self.clock_ms())
            accepted += sum(1 for r in results if r.accepted)
        return accepted


class GovernanceService:
    """Found domains, propose, vote and roll back, from this node, and spread it all."""

    def __init__(self, node: "Node") -> None:
        self.node = node
        node.register_type(APPROVAL, TOPIC_POLICY, approval_schema)
        node.register_type(DOMAIN, TOPIC_POLICY, domain_schema)
        node.handle(APPROVAL, self._on_approval)
        node.handle(DOMAIN, self._on_domain)

    @property
    def store(self) -> PolicyStore:
        return self.node.policy_store

    def register_sync(self) -> None:
        self.node.sync.register(DomainSource(self.store, clock_ms=self.node.now_ms))

    # --- domains --------------------------------------------------------------------

    async def found_domain(self, genesis: DomainGenesis | dict[str, Any]) -> ApplyResult:
        """Apply a (fully signed) genesis here and spread the domain."""
        result = await self.node.blocking(self.store.apply_genesis, genesis, self.node.now_ms())
        name = genesis.name if isinstance(genesis, DomainGenesis) else genesis.get("name")
        self._log("domain_genesis", result, domain=name)
        if result.accepted:
            await self.publish_domain(name)
        return result

    async def publish_domain(self, name: str) -> None:
        export = await self.node.blocking(self.store.export_domain, name)
        if export is not None:
            await self.node.publish(TOPIC_POLICY, DOMAIN, export)

    async def _on_domain(self, delivery: Delivery) -> None:
        results = await self.node.blocking(self.store.import_domain, delivery.envelope.payload, self.node.now_ms())
        for result in results:
            if not result.accepted and result.reason not in ("replayed", "accepted"):
                self._log("domain_import", result, signer=delivery.envelope.signer)

    # --- proposals and votes ----------------------------------------------------------

    async def propose(self, policy: CoopSchedulingPolicy | dict[str, Any], *, reason: str = "",
                      effective_at_ms: int | None = None, ttl_ms: int = DEFAULT_PROPOSAL_TTL_MS
                      ) -> tuple[ApplyResult, PolicyProposal]:
        """Propose the next version of a governed coop's policy, signed by this node.

        The proposer's signature counts as its approval; the act takes effect
        everywhere once enough other members approve it.
        """
        body = policy.to_icn_dict() if isinstance(policy, CoopSchedulingPolicy) else dict(policy)
        coop = body.get("coop_id")
        domain = body.get("governance_domain")
        now = self.node.now_ms()

        def build() -> PolicyProposal:
            head = self.store.heads().get(coop)
            state = self.store.domain_state(domain) if domain else None
            if domain and state is None:
                raise GovernanceError("unknown_domain", f"this node knows no governance domain {domain!r}")
            return PolicyProposal.create(
                self.node.key, body, version=(head.version + 1) if head else 1,
                parent_hash=head.policy_hash if head else None, created_at_ms=now,
                domain_state=state, expires_at_ms=now + ttl_ms, effective_at_ms=effective_at_ms,
                reason=reason)

        proposal = await self.node.blocking(build)
        return await self._submit(PolicyAct(proposal=proposal)), proposal

    async def rollback(self, coop_id: str, to_version: int, *, reason: str = "") -> tuple[ApplyResult, PolicyProposal]:
        """Propose a new version whose body is ``to_version``'s (approved like any other act)."""
        now = self.node.now_ms()
        proposal = await self.node.blocking(lambda: make_rollback_proposal(
            self.store, coop_id, to_version, key=self.node.key, created_at_ms=now,
            expires_at_ms=now + DEFAULT_PROPOSAL_TTL_MS, reason=reason or f"roll back to version {to_version}"))
        return await self._submit(PolicyAct(proposal=proposal)), proposal

    async def submit_act(self, act: PolicyAct | dict[str, Any]) -> ApplyResult:
        """Apply an act (possibly still pending) here and spread it."""
        return await self._submit(act)

    async def _submit(self, act: PolicyAct | dict[str, Any]) -> ApplyResult:
        wire = act.to_wire() if isinstance(act, PolicyAct) else act
        result = await self.node.blocking(self.store.apply_act, wire, self.node.now_ms())
        self._log("policy_act", result)
        if result.accepted or result.reason == "pending":
            await self.node.publish(TOPIC_POLICY, POLICY_ACT, wire)
        return result

    async def approve(self, proposal_id: str) -> ApplyResult | None:
        """Vote for a proposal with this node's key, here and on the mesh."""
        approval = Approval.sign(self.node.key, proposal_id, self.node.now_ms())
        result = await self.node.blocking(self.store.add_approval, approval, self.node.now_ms())
        if result is not None:
            self._log("approval", result)
        if result is None or result.accepted or result.reason == "pending":
            await self.node.publish(TOPIC_POLICY, APPROVAL, approval.to_wire())
        return result

    async def _on_approval(self, delivery: Delivery) -> None:
        result = await self.node.blocking(self.store.add_approval, delivery.envelope.payload, self.node.now_ms())
        if result is not None and not result.accepted and result.reason not in ("replayed", "pending"):
            self._log("approval", result, signer=delivery.envelope.signer)

    @staticmethod
    def _log(what: str, result: ApplyResult, **fields: Any) -> None:
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        level = logging.INFO if result.accepted or result.reason in ("pending", "replayed") else logging.WARNING
        log.log(level, "event=governance_%s accepted=%s reason=%s act=%s version=%s %s detail=%r",
                what, result.accepted, result.reason, result.act_id, result.version, extra, result.detail)
