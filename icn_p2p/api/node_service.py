"""``NodeService`` backed by a running ``icn_p2p.node.Node``.

Only the Node's public surface is used: its stores (read and written through
``node.blocking`` so SQLite never runs on the event loop), ``set_local_policy``
and ``apply_and_publish_act`` for policy changes, and the mesh host for peers
and addresses. What the Node does not offer yet is answered with
``ServiceError("unavailable")`` rather than guessed.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from typing import Any

from icn_p2p import __version__
from icn_p2p.core.decision import PolicyDecision
from icn_p2p.core.policy import CoopSchedulingPolicy

from . import schemas as s

from .service import REASON_INVALID, REASON_NOT_FOUND, ServiceError, unavailable

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class NodeBackedService:
    """The API's view of one running Node."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self._started = time.monotonic()

    # --- helpers ----------------------------------------------------------------------

    @property
    def _policies(self) -> Any:
        store = self.node.policy_store
        if store is None:
            raise ServiceError("unavailable", "the node's policy store is not open yet")
        return store

    @property
    def _usage(self) -> Any:
        store = self.node.usage_store
        if store is None:
            raise ServiceError("unavailable", "the node's usage store is not open yet")
        return store

    async def _blocking(self, fn: Any, *args: Any) -> Any:
        return await self.node.blocking(fn, *args)

    @staticmethod
    def _record(v: Any) -> s.PolicyRecord:
        return s.PolicyRecord(
            coop_id=v.coop_id, version=v.version, content_hash=v.policy_hash, policy=v.policy,
            set_by=v.proposer, set_at_ms=v.created_at_ms, governed=v.mode == "governed",
        )

    async def _current(self, coop_id: str) -> Any:
        version = await self._blocking(self._policies.current, coop_id, _now_ms())
        if version is None:
            raise ServiceError(REASON_NOT_FOUND, f"no policy for coop {coop_id!r}", {"coop_id": coop_id})
        return version

    # --- policy -----------------------------------------------------------------------

    async def policy_set(self, p: s.PolicySetParams) -> s.PolicySetResult:
        if p.policy is not None and p.policy.governance_domain is not None:
            raise ServiceError(
                "governed_coop",
                f"coop {p.policy.coop_id} is governed by domain {p.policy.governance_domain}: its policy changes "
                "by proposal and approvals (icnctl policy propose); policy set takes policies without a "
                "governance_domain (development sandboxes)",
                {"domain": p.policy.governance_domain},
            )
        if p.policy is not None:
            coop = p.policy.coop_id
            head = (await self._blocking(self.node.policy_heads)).get(coop)
            body_hash = p.policy.content_hash()
            if head is not None and head.policy_hash == body_hash:
                return s.PolicySetResult(coop_id=coop, version=head.version, content_hash=body_hash,
                                         changed=False, act_id=head.act_id)
            result = await self.node.set_local_policy(p.policy, reason=p.reason)
        else:
            act = _act_from_json(p.act or {})
            coop = act.proposal.coop_id
            if p.coop_id is not None and p.coop_id != coop:
                raise ServiceError(REASON_INVALID, f"coop_id {p.coop_id!r} does not match the act's {coop!r}")
            result = await self.node.apply_and_publish_act(act)
        if not result.accepted and result.reason != "pending":
            raise ServiceError(
                str(result.reason), result.detail or f"policy update refused: {result.reason}",
                {"act_id": result.act_id, "notes": list(result.notes), "head_version": result.head_version},
            )
        body = p.policy if p.policy is not None else CoopSchedulingPolicy.model_validate(act.proposal.policy)
        log.info("event=policy_set coop=%s version=%s status=%s", coop, result.version, result.reason)
        return s.PolicySetResult(
            coop_id=coop, version=result.version or 0,
            content_hash=body.content_hash(),
            status="pending" if result.reason == "pending" else "accepted", act_id=result.act_id,
        )

    async def policy_get(self, p: s.PolicyGetParams) -> s.PolicyRecord:
        if p.version is None:
            return self._record(await self._current(p.coop_id))
        version = await self._blocking(self._policies.get, p.coop_id, p.version)
        if version is None:
            raise ServiceError(REASON_NOT_FOUND, f"coop {p.coop_id!r} has no version {p.version}",
                               {"coop_id": p.coop_id, "version": p.version})
        return self._record(version)

    async def policy_list(self, p: s.NoParams) -> s.PolicyListResult:
        store = self._policies
        now = _now_ms()

        def collect() -> list[s.PolicySummary]:
            out = []
            for coop in store.coops():
                v = store.current(coop, now)
                if v is not None:
                    out.append(s.policy_summary(coop, v.version, v.policy))
            return out

        return s.PolicyListResult(policies=await self._blocking(collect))

    async def policy_remove(self, p: s.PolicyRemoveParams) -> s.PolicyRemoveResult:
        from icn_p2p.policy.governance import GovernanceError

        try:
            removed = await self._blocking(self._policies.remove, p.coop_id)
        except GovernanceError as e:
            raise ServiceError(e.reason, str(e), {"coop_id": p.coop_id}) from None
        return s.PolicyRemoveResult(coop_id=p.coop_id, removed=bool(removed))

    async def policy_history(self, p: s.PolicyHistoryParams) -> s.PolicyHistoryResult:
        versions = await self._blocking(self._policies.history, p.coop_id)
        if not versions:
            raise ServiceError(REASON_NOT_FOUND, f"no policy history for coop {p.coop_id!r}", {"coop_id": p.coop_id})
        return s.PolicyHistoryResult(coop_id=p.coop_id, versions=[
            s.PolicyVersionInfo(
                version=v.version, content_hash=v.policy_hash, set_by=v.proposer, set_at_ms=v.created_at_ms,
                governed=v.mode == "governed", status=v.status, reason=v.reason, approvers=len(v.approvers),
                approver_dids=list(v.approvers), mode=v.mode, effective_at_ms=v.effective_at_ms,
                changes=_diff_summary(v),
            )
            for v in versions[-p.limit:]
        ])

    # --- governance ---------------------------------------------------------------------

    @staticmethod
    def _proposal_result(result: Any, proposal: Any) -> s.ProposalResult:
        return s.ProposalResult(coop_id=proposal.coop_id, proposal_id=proposal.proposal_id,
                                version=proposal.version, status=result.reason, accepted=result.accepted,
                                detail=result.detail)

    async def policy_propose(self, p: s.PolicyProposeParams) -> s.ProposalResult:
        from icn_p2p.policy.governance import GovernanceError

        if p.policy.governance_domain is None:
            raise ServiceError(REASON_INVALID, "a policy without a governance_domain is set with policy.set")
        try:
            result, proposal = await self.node.governance.propose(
                p.policy, reason=p.reason, effective_at_ms=p.effective_at_ms)
        except GovernanceError as exc:
            raise ServiceError(exc.reason, str(exc)) from None
        return self._proposal_result(result, proposal)

    async def policy_rollback(self, p: s.PolicyRollbackParams) -> s.ProposalResult:
        from icn_p2p.policy.governance import GovernanceError

        try:
            result, proposal = await self.node.governance.rollback(p.coop_id, p.to_version, reason=p.reason)
        except GovernanceError as exc:
            raise ServiceError(exc.reason, str(exc)) from None
        return self._proposal_result(result, proposal)

    async def policy_approve(self, p: s.PolicyApproveParams) -> s.PolicyApproveResult:
        result = await self.node.governance.approve(p.proposal_id)
        if result is None:
            return s.PolicyApproveResult(proposal_id=p.proposal_id, status="pending", accepted=False)
        return s.PolicyApproveResult(proposal_id=p.proposal_id, status=result.reason, accepted=result.accepted,
                                     version=result.version, detail=result.detail)

    @staticmethod
    def _domain_info(state: Any, *, status: str = "accepted", accepted: bool = True) -> s.DomainInfo:
        return s.DomainInfo(name=state.name, genesis_id=state.genesis_id, state_hash=state.state_hash,
                            seq=state.seq, members=list(state.members), threshold=state.threshold,
                            status=status, accepted=accepted)

    async def domain_found(self, p: s.DomainFoundParams) -> s.DomainInfo:
        from icn_p2p.policy.governance import DomainGenesis, GovernanceError

        wire = dict(p.genesis)
        sigs = wire.get("signatures")
        if isinstance(sigs, list):
            wire["signatures"] = [_unhex_signature(a, f"genesis.signatures.{i}") for i, a in enumerate(sigs)]
        try:
            genesis = DomainGenesis.from_wire(wire)
        except GovernanceError as exc:
            raise ServiceError(exc.reason, str(exc)) from None
        result = await self.node.governance.found_domain(genesis)
        state = self._policies.domain_state(genesis.name)
        if not result.accepted and state is None:
            raise ServiceError(result.reason, f"domain {genesis.name} refused: {result.reason} {result.detail}".strip())
        return self._domain_info(state, status=result.reason, accepted=result.accepted)

    async def domain_get(self, p: s.DomainGetParams) -> s.DomainInfo:
        state = self._policies.domain_state(p.name)
        if state is None:
            raise ServiceError(REASON_NOT_FOUND, f"no governance domain {p.name!r} on this node", {"name": p.name})
        return self._domain_info(state)

    async def policy_check(self, p: s.PolicyCheckParams) -> s.PolicyCheckResult:
        from icn_p2p.core.task import ComputeTask
        from icn_p2p.policy.admission import evaluate

        at = p.at_ms if p.at_ms is not None else _now_ms()
        version = None
        policy = p.policy
        if policy is None:
            version = await self._current(p.coop_id)
            policy = version.policy
        task = ComputeTask(id="what-if", coop_id=p.coop_id, submitter=p.member, priority=p.priority,
                           scope=p.scope, tags=list(p.tags), fuel_limit=p.fuel_limit)
        usage = await self._blocking(self._usage.member_usage, p.coop_id, p.member, at)
        decision = evaluate(policy, task, p.member, usage, at)
        return s.PolicyCheckResult(decision=decision, usage=usage,
                                   policy_version=version.version if version is not None else None)

    # --- quota ------------------------------------------------------------------------

    async def _quota(self, coop_id: str) -> Any:
        version = await self._blocking(self._policies.current, coop_id, _now_ms())
        return version.policy if version is not None else None

    async def quota_usage(self, p: s.QuotaUsageParams) -> s.QuotaUsageResult:
        at = _month_ms(p.month)
        usage = await self._blocking(self._usage.member_usage, p.coop_id, p.member, at)
        policy = await self._quota(p.coop_id)
        return s.QuotaUsageResult(usage=usage, quota=policy.quota_for(p.member) if policy else None)

    async def quota_list(self, p: s.QuotaListParams) -> s.QuotaListResult:
        from icn_p2p.core.clock import month_key

        at = _month_ms(p.month)
        store = self._usage

        def collect() -> list[Any]:
            return [store.member_usage(p.coop_id, m, at) for m in sorted(store.members(p.coop_id, at))]

        usages = await self._blocking(collect)
        policy = await self._quota(p.coop_id)
        return s.QuotaListResult(coop_id=p.coop_id, month=month_key(at), members=[
            s.QuotaUsageResult(usage=u, quota=policy.quota_for(u.member) if policy else None) for u in usages
        ])

    # --- compute (the task lifecycle is not wired into the Node yet) -------------------

    @property
    def _compute(self) -> Any:
        compute = getattr(self.node, "compute", None)
        if compute is None or compute.tasks is None:
            raise unavailable("compute")
        return compute

    @staticmethod
    def _task_status(record: Any) -> s.TaskStatus:
        receipt = record.receipt or {}
        result = record.result or {}
        return s.TaskStatus(
            task_id=record.task_id, coop_id=record.coop_id, submitter=record.submitter,
            state=record.state.value, priority=record.task.get("priority", "Normal"),
            executor=record.executor, submitted_at_ms=record.created_at_ms,
            updated_at_ms=record.updated_at_ms, fuel_used=receipt.get("fuel_used"),
            cpu_ms=receipt.get("cpu_ms"), result=result.get("values"),
            error=result.get("error") or (record.reason if record.state.value in ("failed", "expired") else None),
            reason=record.reason, policy_version=record.policy_version, policy_hash=record.policy_hash,
            adjusted_priority=record.adjusted_priority, attempts=record.attempts,
            waiting_for=list(record.waiting_for),
            events=[e.model_dump(mode="json") for e in record.events],
        )

    async def compute_submit(self, p: s.ComputeSubmitParams) -> s.ComputeSubmitResult:
        from icn_p2p.core.task import ComputeTask
        from icn_p2p.node.compute import SubmitError

        compute = self._compute
        task_id = p.task_id or secrets.token_hex(8)
        try:
            task = ComputeTask(
                id=task_id, coop_id=p.coop_id, submitter=p.submitter or self.node.did,
                priority=p.priority, scope=p.scope, tags=list(p.tags), fuel_limit=p.fuel_limit,
                locality_hints=p.locality_hints, resource_profile=p.resource_profile,
                deadline_ms=p.deadline_ms, entry=p.entry, args=list(p.args),
            )
            record = await compute.submit(task, base64.b64decode(p.module))
        except SubmitError as exc:
            raise ServiceError(exc.reason, str(exc)) from None
        decision = PolicyDecision.model_validate(record.decision) if record.decision else None
        return s.ComputeSubmitResult(task_id=record.task_id, state=record.state.value, decision=decision,
                                     reason=record.reason)

    async def _task_record(self, task_id: str) -> Any:
        record = await self._compute.status(task_id)
        if record is None:
            raise ServiceError(REASON_NOT_FOUND, f"no task {task_id} on this node", {"task_id": task_id})
        return record

    async def compute_status(self, p: s.TaskIdParams) -> s.TaskStatus:
        return self._task_status(await self._task_record(p.task_id))

    async def compute_cancel(self, p: s.ComputeCancelParams) -> s.ComputeCancelResult:
        before = await self._task_record(p.task_id)
        if before.state.final:
            return s.ComputeCancelResult(task_id=p.task_id, cancelled=False, state=before.state.value)
        after = await self._compute.cancel(p.task_id, reason=p.reason or "cancelled by the submitter")
        return s.ComputeCancelResult(task_id=p.task_id, cancelled=after.state.value == "cancelled",
                                     state=after.state.value)

    async def compute_list(self, p: s.ComputeListParams) -> s.ComputeListResult:
        from icn_p2p.node.lifecycle import TaskState

        records = await self._compute.list(coop_id=p.coop_id,
                                           state=TaskState(p.state) if p.state else None, limit=p.limit)
        return s.ComputeListResult(tasks=[self._task_status(r) for r in records])

    async def compute_explain(self, p: s.TaskIdParams) -> s.ComputeExplainResult:
        record = await self._task_record(p.task_id)
        explained = self._compute.explain(p.task_id) or {}
        offers = []
        for o in explained.get("offers", []):
            reasons = [o["excluded_by"]["reason"]] if o.get("excluded_by") else []
            offers.append(s.OfferScore(
                executor=o["executor"], feasible=o["feasible"], score=o.get("score"),
                breakdown={k: v["value"] for k, v in o.get("breakdown", {}).items()}, reasons=reasons))
        decision = PolicyDecision.model_validate(record.decision) if record.decision else None
        return s.ComputeExplainResult(
            task_id=record.task_id, state=record.state.value, decision=decision, offers=offers,
            chosen=explained.get("winner") or record.executor, explanation=explained.get("explanation"),
            waiting_for=list(explained.get("waiting_for") or record.waiting_for),
        )

    # --- mesh and node ----------------------------------------------------------------

    def _peer_ids(self) -> list[Any]:
        return sorted(self.node.host.connected_peers(), key=lambda pid: pid.to_base58())

    async def mesh_peers(self, p: s.NoParams) -> s.MeshPeersResult:
        host = self.node.host
        await self.node.peer_views.refresh()
        peerstore = host.libp2p.get_peerstore()
        peers = []
        for pid in self._peer_ids():
            b58 = pid.to_base58()
            try:
                addrs = [str(a) for a in peerstore.addrs(pid)]
            except Exception:  # a peer the store has no address for (inbound only)
                addrs = []
            try:
                did = host.did_for_peer(pid)
            except Exception:
                did = None
            view = self.node.peer_views.views.get(did) if did else None
            peers.append(s.PeerInfo(
                peer_id=b58, did=did,
                addrs=[a if "/p2p/" in a else f"{a}/p2p/{b58}" for a in addrs],
                rtt_ms=host.rtt_ms(pid),
                coops=list(view.coops) if view else [],
                policy_versions=dict(view.versions) if view else {},
            ))
        return s.MeshPeersResult(peers=peers)

    async def node_info(self, p: s.NoParams | None) -> s.NodeInfo:
        config = self.node.config
        heads = await self._blocking(self.node.policy_heads)
        return s.NodeInfo(
            did=self.node.did,
            peer_id=self.node.peer_id.to_base58(),
            listen_addrs=self.node.listen_addrs(),
            version=__version__,
            coops=sorted(set(config.coops) | set(heads)),
            region=config.region,
            capabilities=dict(config.capabilities),
            peers=len(self._peer_ids()),
            uptime_s=round(time.monotonic() - self._started, 3),
            policy_versions={c: h.version for c, h in heads.items()},
        )

    async def health(self) -> s.Health:
        ok = self.node.started.is_set() and self.node.policy_store is not None and self.node.host.running
        return s.Health(ok=ok, did=self.node.did, peers=len(self._peer_ids()))


def _month_ms(month: str | None) -> int:
    if month is None:
        return _now_ms()
    from icn_p2p.core.clock import month_start_ms

    return month_start_ms(month)


def _unhex_signature(obj: Any, where: str) -> Any:
    if not isinstance(obj, dict) or "signature" not in obj:
        return obj
    sig = obj["signature"]
    if isinstance(sig, str):
        try:
            sig = bytes.fromhex(sig)
        except ValueError:
            raise ServiceError("malformed", f"{where}.signature must be hex") from None
    return {**obj, "signature": sig}


def _diff_summary(version: Any) -> str:
    diff = getattr(version, "diff", None)
    if diff is None:
        return ""
    return diff.summary() if hasattr(diff, "summary") else str(diff)


def _act_from_json(act: dict[str, Any]) -> Any:
    """A ``PolicyAct`` from its JSON form: the wire dict with every ``signature`` as hex."""
    from icn_p2p.policy.governance import GovernanceError, PolicyAct

    wire = dict(act)
    wire["proposal"] = _unhex_signature(act.get("proposal"), "act.proposal")
    approvals = act.get("approvals", [])
    if isinstance(approvals, list):
        wire["approvals"] = [_unhex_signature(a, f"act.approvals.{i}") for i, a in enumerate(approvals)]
    try:
        return PolicyAct.from_wire(wire)
    except GovernanceError as e:
        raise ServiceError(e.reason, f"the act cannot be used: {e.detail or e.reason}") from None


def act_to_json(act: Any) -> dict[str, Any]:
    """The JSON form of a ``PolicyAct`` that ``policy.set`` takes (signatures as hex)."""
    wire = act.to_wire()

    def hexed(obj: dict[str, Any]) -> dict[str, Any]:
        sig = obj.get("signature")
        return {**obj, "signature": sig.hex()} if isinstance(sig, bytes) else obj

    return {**wire, "proposal": hexed(wire["proposal"]), "approvals": [hexed(a) for a in wire["approvals"]]}
