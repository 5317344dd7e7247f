"""What the API asks of a node: the ``NodeService`` protocol and the method table.

The HTTP face depends on this protocol, not on ``icn_p2p.node``: the JSON-RPC
layer is tested against any object with these methods, and the node-backed
implementation lives in ``node_service``. Each RPC method maps to one async
method taking a validated params model and returning a result model.

A service signals an expected failure with ``ServiceError``: it becomes a
JSON-RPC ``-32000`` error whose ``data.reason`` a client can branch on
(``not_found``, ``policy_rejected``, ``unavailable``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from . import schemas as s

#: Reasons a service uses; clients branch on these, so they are part of the API.
REASON_NOT_FOUND = "not_found"
REASON_POLICY_REJECTED = "policy_rejected"
REASON_UNAVAILABLE = "unavailable"
REASON_INVALID = "invalid"
REASON_UNAUTHORIZED_SIGNER = "unauthorized_signer"
REASON_CONFLICT = "conflict"


class ServiceError(Exception):
    """An expected failure of a service call, with a machine-readable reason."""

    def __init__(self, reason: str, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.data = data

    def __repr__(self) -> str:
        return f"ServiceError({self.reason!r}, {self.message!r})"


def unavailable(capability: str) -> ServiceError:
    """The error for a capability this node does not have yet."""
    return ServiceError(
        REASON_UNAVAILABLE, f"{capability} is not available on this node", {"capability": capability}
    )


@runtime_checkable
class NodeService(Protocol):
    """The node as the API sees it. Every method may raise ``ServiceError``."""

    async def policy_set(self, params: s.PolicySetParams) -> s.PolicySetResult: ...
    async def policy_get(self, params: s.PolicyGetParams) -> s.PolicyRecord: ...
    async def policy_list(self, params: s.NoParams) -> s.PolicyListResult: ...
    async def policy_remove(self, params: s.PolicyRemoveParams) -> s.PolicyRemoveResult: ...
    async def policy_history(self, params: s.PolicyHistoryParams) -> s.PolicyHistoryResult: ...
    async def policy_check(self, params: s.PolicyCheckParams) -> s.PolicyCheckResult: ...
    async def policy_propose(self, params: s.PolicyProposeParams) -> s.ProposalResult: ...
    async def policy_approve(self, params: s.PolicyApproveParams) -> s.PolicyApproveResult: ...
    async def policy_rollback(self, params: s.PolicyRollbackParams) -> s.ProposalResult: ...
    async def domain_found(self, params: s.DomainFoundParams) -> s.DomainInfo: ...
    async def domain_get(self, params: s.DomainGetParams) -> s.DomainInfo: ...
    async def quota_usage(self, params: s.QuotaUsageParams) -> s.QuotaUsageResult: ...
    async def quota_list(self, params: s.QuotaListParams) -> s.QuotaListResult: ...
    async def compute_submit(self, params: s.ComputeSubmitParams) -> s.ComputeSubmitResult: ...
    async def compute_status(self, params: s.TaskIdParams) -> s.TaskStatus: ...
    async def compute_cancel(self, params: s.ComputeCancelParams) -> s.ComputeCancelResult: ...
    async def compute_list(self, params: s.ComputeListParams) -> s.ComputeListResult: ...
    async def compute_explain(self, params: s.TaskIdParams) -> s.ComputeExplainResult: ...
    async def mesh_peers(self, params: s.NoParams) -> s.MeshPeersResult: ...
    async def node_info(self, params: s.NoParams) -> s.NodeInfo: ...
    async def health(self) -> s.Health: ...


@dataclass(frozen=True)
class Method:
    """One RPC method: its params and result models, the service attribute, and whether it mutates."""

    name: str
    params: type[BaseModel]
    result: type[BaseModel]
    attr: str
    mutating: bool = False


def _m(name: str, params: type[BaseModel], result: type[BaseModel], *, mutating: bool = False) -> Method:
    return Method(name, params, result, name.replace(".", "_"), mutating)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        _m("policy.set", s.PolicySetParams, s.PolicySetResult, mutating=True),
        _m("policy.get", s.PolicyGetParams, s.PolicyRecord),
        _m("policy.list", s.NoParams, s.PolicyListResult),
        _m("policy.remove", s.PolicyRemoveParams, s.PolicyRemoveResult, mutating=True),
        _m("policy.history", s.PolicyHistoryParams, s.PolicyHistoryResult),
        _m("policy.check", s.PolicyCheckParams, s.PolicyCheckResult),
        _m("policy.propose", s.PolicyProposeParams, s.ProposalResult, mutating=True),
        _m("policy.approve", s.PolicyApproveParams, s.PolicyApproveResult, mutating=True),
        _m("policy.rollback", s.PolicyRollbackParams, s.ProposalResult, mutating=True),
        _m("domain.found", s.DomainFoundParams, s.DomainInfo, mutating=True),
        _m("domain.get", s.DomainGetParams, s.DomainInfo),
        _m("quota.usage", s.QuotaUsageParams, s.QuotaUsageResult),
        _m("quota.list", s.QuotaListParams, s.QuotaListResult),
        _m("compute.submit", s.ComputeSubmitParams, s.ComputeSubmitResult, mutating=True),
        _m("compute.status", s.TaskIdParams, s.TaskStatus),
        _m("compute.cancel", s.ComputeCancelParams, s.ComputeCancelResult, mutating=True),
        _m("compute.list", s.ComputeListParams, s.ComputeListResult),
        _m("compute.explain", s.TaskIdParams, s.ComputeExplainResult),
        _m("mesh.peers", s.NoParams, s.MeshPeersResult),
        _m("node.info", s.NoParams, s.NodeInfo),
    )
}
