"""Params and results of every JSON-RPC method, as pydantic models.

Params are validated strictly (unknown fields refused, no string-to-number
coercion) so a client learns the exact field that is wrong. Results are what
the service returns; the dispatcher serialises them with ``mode="json"``.

Policies travel in ICN's file format (``CoopSchedulingPolicy``), usage as
``MemberUsage`` and admission outcomes as ``PolicyDecision``, so the API says
the same thing the files and the logs say.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from icn_p2p.core.decision import PolicyDecision
from icn_p2p.core.enums import EnforcementMode, ScopeLevel, TaskPriority
from icn_p2p.core.policy import CoopSchedulingPolicy, MemberQuota
from icn_p2p.core.task import DEFAULT_FUEL_LIMIT, LocalityHints, ResourceProfile, looks_like_module
from icn_p2p.core.usage import MemberUsage

Name = Annotated[str, Field(min_length=1, max_length=512)]
Month = Annotated[str, Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")]
Priority = Annotated[TaskPriority, Field(strict=False)]
Scope = Annotated[ScopeLevel, Field(strict=False)]
Limit = Annotated[int, Field(ge=1, le=10_000)]
U64 = Annotated[int, Field(ge=0, le=2**64 - 1)]

#: Largest WebAssembly module accepted over RPC (decoded bytes); the HTTP body
#: limit bounds the request as a whole.
MAX_MODULE_BYTES = 512 * 1024

TASK_STATES = ("submitted", "admitted", "rejected", "waiting", "placed", "running", "completed", "failed",
               "cancelled", "expired")
TERMINAL_TASK_STATES = frozenset({"completed", "failed", "rejected", "cancelled", "expired"})


class Params(BaseModel):
    """Base of every params model: strict, closed."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Result(BaseModel):
    """Base of every result model: lax so a service may return enums or plain values."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(Params):
    """Methods that take nothing."""


# --- policy ------------------------------------------------------------------


class PolicySetParams(Params):
    """Set a coop's policy: a plain ``policy`` or a signed governance ``act``, not both.

    A plain policy is a local act signed by the node's own key: accepted only
    for a coop whose policy has no governance domain (a development sandbox).
    A governed coop changes only through a ``PolicyAct`` (proposal plus member
    approvals, as ``PolicyAct.to_wire()``), which the node verifies and gossips.
    ``coop_id``, when given, must match the policy's (or the act's) coop.
    """

    policy: CoopSchedulingPolicy | None = None
    act: dict[str, Any] | None = None
    coop_id: Name | None = None
    reason: Annotated[str, Field(max_length=1024)] = ""

    @field_validator("act")
    @classmethod
    def _one_of(cls, v: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        if v is not None and info.data.get("policy") is not None:
            raise ValueError("give either policy or act, not both")
        return v

    @field_validator("coop_id")
    @classmethod
    def _same_coop(cls, v: str | None, info: ValidationInfo) -> str | None:
        policy = info.data.get("policy")
        if v is not None and policy is not None and v != policy.coop_id:
            raise ValueError(f"coop_id {v!r} does not match the policy's coop_id {policy.coop_id!r}")
        return v

    @model_validator(mode="after")
    def _something(self) -> "PolicySetParams":
        if self.policy is None and self.act is None:
            raise PydanticCustomError("missing", "give a policy or a signed act")
        return self


class PolicySetResult(Result):
    coop_id: str
    version: int
    content_hash: str
    #: False when the same body was already the current version (nothing changed).
    changed: bool = True
    #: "accepted" (the version is on the chain) or "pending" (a proposal waiting for approvals).
    status: str = "accepted"
    act_id: str | None = None


class PolicyGetParams(Params):
    coop_id: Name
    #: A past version from the history; the current one when absent.
    version: Annotated[int, Field(ge=1)] | None = None


class PolicyRecord(Result):
    """One version of a coop's policy as the node holds it."""

    coop_id: str
    version: int
    content_hash: str
    policy: CoopSchedulingPolicy
    set_by: str | None = None
    set_at_ms: int | None = None
    #: True when signed by the coop's governance domain, False for a sandbox set by a node key.
    governed: bool = False


class PolicySummary(Result):
    coop_id: str
    version: int
    content_hash: str
    enforcement_mode: EnforcementMode
    governance_domain: str | None = None
    rules: int = 0
    member_quotas: int = 0


class PolicyListResult(Result):
    policies: list[PolicySummary]


class PolicyRemoveParams(Params):
    coop_id: Name


class PolicyRemoveResult(Result):
    coop_id: str
    removed: bool


class PolicyHistoryParams(Params):
    coop_id: Name
    limit: Limit = 50


class PolicyVersionInfo(Result):
    version: int
    content_hash: str
    set_by: str | None = None
    set_at_ms: int | None = None
    governed: bool = False
    #: "active" when on the chain; otherwise why not (superseded, expired, ...).
    status: str = "active"
    reason: str = ""
    approvers: int = 0
    approver_dids: list[str] = Field(default_factory=list)
    mode: str = "local"
    effective_at_ms: int | None = None
    #: What changed from the version it replaced, one line (``no change`` for a first version).
    changes: str = ""


class PolicyHistoryResult(Result):
    coop_id: str
    versions: list[PolicyVersionInfo]


class PolicyProposeParams(Params):
    """Propose the next version of a governed coop's policy, signed by this node (a member)."""

    policy: CoopSchedulingPolicy
    reason: Annotated[str, Field(max_length=1024)] = ""
    effective_at_ms: U64 | None = None


class PolicyRollbackParams(Params):
    """Propose a new version whose body is an earlier version's."""

    coop_id: Name
    to_version: Annotated[int, Field(ge=1)]
    reason: Annotated[str, Field(max_length=1024)] = ""


class ProposalResult(Result):
    coop_id: str
    proposal_id: str
    version: int
    #: "accepted" (in force on the chain), "pending" (waiting for approvals) or why it was refused.
    status: str
    accepted: bool
    detail: str = ""


class PolicyApproveParams(Params):
    proposal_id: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class PolicyApproveResult(Result):
    proposal_id: str
    status: str
    accepted: bool
    version: int | None = None
    detail: str = ""


class DomainFoundParams(Params):
    """A domain genesis signed by every founding member (``DomainGenesis.to_wire()``, bytes as hex)."""

    genesis: dict[str, Any]


class DomainGetParams(Params):
    name: Name


class DomainInfo(Result):
    name: str
    genesis_id: str
    state_hash: str
    seq: int
    members: list[str]
    threshold: int
    accepted: bool = True
    status: str = "accepted"


class PolicyCheckParams(Params):
    """What would admission say to this member's task now, given live usage?

    ``policy`` checks a candidate policy instead of the current one (a what-if
    before voting on it); ``at_ms`` evaluates at another time.
    """

    coop_id: Name
    member: Name
    priority: Priority = TaskPriority.NORMAL
    scope: Scope = ScopeLevel.LOCAL
    tags: list[str] = Field(default_factory=list, max_length=256)
    fuel_limit: U64 = DEFAULT_FUEL_LIMIT
    at_ms: U64 | None = None
    policy: CoopSchedulingPolicy | None = None

    @field_validator("policy")
    @classmethod
    def _same_coop(
        cls, v: CoopSchedulingPolicy | None, info: ValidationInfo
    ) -> CoopSchedulingPolicy | None:
        coop_id = info.data.get("coop_id")
        if v is not None and coop_id is not None and v.coop_id != coop_id:
            raise ValueError(f"the candidate policy is for {v.coop_id!r}, not {coop_id!r}")
        return v


class PolicyCheckResult(Result):
    decision: PolicyDecision
    usage: MemberUsage
    policy_version: int | None = None


# --- quota -------------------------------------------------------------------


class QuotaUsageParams(Params):
    coop_id: Name
    member: Name
    month: Month | None = None


class QuotaUsageResult(Result):
    """A member's merged usage with the quota that applies to them (None without a policy)."""

    usage: MemberUsage
    quota: MemberQuota | None = None


class QuotaListParams(Params):
    coop_id: Name
    month: Month | None = None


class QuotaListResult(Result):
    coop_id: str
    month: str
    members: list[QuotaUsageResult]


# --- compute -----------------------------------------------------------------


class ComputeSubmitParams(Params):
    """A task to admit and place. The module travels base64-encoded in ``module``."""

    coop_id: Name
    module: Annotated[str, Field(min_length=1)]
    entry: Name = "main"
    args: list[int | float] = Field(default_factory=list, max_length=1024)
    fuel_limit: Annotated[int, Field(ge=1, le=2**64 - 1)] = DEFAULT_FUEL_LIMIT
    priority: Priority = TaskPriority.NORMAL
    scope: Scope = ScopeLevel.LOCAL
    tags: list[str] = Field(default_factory=list, max_length=256)
    #: The member the task is charged to; the node's own DID when absent.
    submitter: Name | None = None
    locality_hints: LocalityHints = Field(default_factory=LocalityHints)
    resource_profile: ResourceProfile = Field(default_factory=ResourceProfile)
    deadline_ms: U64 | None = None
    #: A caller-chosen id (unique per node); a random one when absent.
    task_id: Name | None = None

    @field_validator("module")
    @classmethod
    def _base64(cls, v: str) -> str:
        try:
            raw = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("module must be standard base64") from None
        if len(raw) > MAX_MODULE_BYTES:
            raise ValueError(f"module is {len(raw)} bytes, more than the {MAX_MODULE_BYTES} allowed")
        if not looks_like_module(raw):
            raise ValueError("module is neither a WebAssembly binary (\\0asm header) nor WAT text ((module ...))")
        return v

    def module_bytes(self) -> bytes:
        return base64.b64decode(self.module)


class ComputeSubmitResult(Result):
    task_id: str
    state: str
    decision: PolicyDecision | None = None
    reason: str | None = None


class TaskIdParams(Params):
    task_id: Name


class ComputeCancelParams(Params):
    task_id: Name
    reason: Annotated[str, Field(max_length=1024)] | None = None


class TaskStatus(Result):
    task_id: str
    coop_id: str
    submitter: str
    state: str
    priority: TaskPriority = TaskPriority.NORMAL
    executor: str | None = None
    submitted_at_ms: int | None = None
    updated_at_ms: int | None = None
    fuel_used: int | None = None
    cpu_ms: int | None = None
    result: Any = None
    error: str | None = None
    reason: str | None = None
    policy_version: int | None = None
    policy_hash: str | None = None
    adjusted_priority: TaskPriority | None = None
    attempts: int = 0
    waiting_for: list[str] = Field(default_factory=list)
    events: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_TASK_STATES


class ComputeCancelResult(Result):
    task_id: str
    cancelled: bool
    state: str


class ComputeListParams(Params):
    coop_id: Name | None = None
    state: Literal[TASK_STATES] | None = None  # type: ignore[valid-type]
    limit: Limit = 100


class ComputeListResult(Result):
    tasks: list[TaskStatus]


class OfferScore(Result):
    """One executor's offer: feasible or not, and the score's breakdown."""

    executor: str
    feasible: bool
    score: float | None = None
    breakdown: dict[str, float] = Field(default_factory=dict)
    reasons: list[str] = Field(default_factory=list)


class ComputeExplainResult(Result):
    task_id: str
    state: str
    decision: PolicyDecision | None = None
    offers: list[OfferScore] = Field(default_factory=list)
    chosen: str | None = None
    explanation: str | None = None
    waiting_for: list[str] = Field(default_factory=list)


# --- mesh and node -------------------------------------------------------------


class PeerInfo(Result):
    peer_id: str
    did: str | None = None
    addrs: list[str] = Field(default_factory=list)
    rtt_ms: float | None = None
    coops: list[str] = Field(default_factory=list)
    #: coop_id -> the policy version that peer announced last.
    policy_versions: dict[str, int] = Field(default_factory=dict)


class MeshPeersResult(Result):
    peers: list[PeerInfo]


class NodeInfo(Result):
    did: str
    peer_id: str
    #: Full multiaddrs, each ending in ``/p2p/<peer_id>``.
    listen_addrs: list[str]
    version: str
    coops: list[str] = Field(default_factory=list)
    region: str | None = None
    capabilities: dict[str, str] = Field(default_factory=dict)
    peers: int = 0
    uptime_s: float = 0.0
    #: coop_id -> the local policy version.
    policy_versions: dict[str, int] = Field(default_factory=dict)


class Health(Result):
    """What ``GET /healthz`` reports."""

    ok: bool
    did: str
    peers: int


def policy_summary(coop_id: str, version: int, policy: CoopSchedulingPolicy) -> PolicySummary:
    """The list row for one policy: counts, not bodies."""
    return PolicySummary(
        coop_id=coop_id,
        version=version,
        content_hash=policy.content_hash(),
        enforcement_mode=policy.enforcement_mode,
        governance_domain=policy.governance_domain,
        rules=len(policy.rules),
        member_quotas=len(policy.member_quotas),
    )
