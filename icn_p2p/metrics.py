"""Prometheus metrics of one node process.

Every metric lives on ``REGISTRY`` (not the library's global one) so the HTTP
face exports exactly the node's figures. Modules define their metrics here,
next to each other, so names and labels stay consistent and cardinality stays
visible in one place.

Member labels are unbounded in a large coop; ``member_label`` folds them into
``"*"`` when an operator turns them off.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_member_labels_enabled = True


def set_member_labels(enabled: bool) -> None:
    global _member_labels_enabled
    _member_labels_enabled = enabled


def member_label(member: str) -> str:
    return member if _member_labels_enabled else "*"


# --- policy and admission (the seed's names) --------------------------------

POLICY_VIOLATIONS = Counter(
    "icn_policy_violations", "Policy rule violations seen at admission",
    ["coop", "rule"], registry=REGISTRY,
)
QUOTA_EXCEEDED = Counter(
    "icn_quota_exceeded", "Quota checks that failed at admission",
    ["coop", "quota"], registry=REGISTRY,
)
TASKS_REJECTED_POLICY = Counter(
    "icn_tasks_rejected_policy", "Tasks rejected by a coop's policy",
    ["coop"], registry=REGISTRY,
)
POLICY_EVALUATION_SECONDS = Histogram(
    "icn_policy_evaluation_seconds", "Time to evaluate one admission decision",
    buckets=(1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2),
    registry=REGISTRY,
)

# --- usage ---------------------------------------------------------------------

MEMBER_CPU_HOURS = Gauge(
    "icn_member_cpu_hours", "A member's merged CPU-hours this month",
    ["coop", "member"], registry=REGISTRY,
)
MEMBER_TASKS_COMPLETED = Counter(
    "icn_member_tasks_completed", "Tasks completed for a member (observed on this node)",
    ["coop", "member"], registry=REGISTRY,
)
MEMBER_CREDITS_SPENT = Counter(
    "icn_member_credits_spent", "Credits spent by a member (observed on this node)",
    ["coop", "member"], registry=REGISTRY,
)

# --- wire, gossip and sync -------------------------------------------------------

MESSAGES_DROPPED = Counter(
    "icn_messages_dropped", "Network messages dropped before delivery, by reason",
    ["topic", "reason"], registry=REGISTRY,
)
GOSSIP_MESSAGES_IN = Counter(
    "icn_gossip_messages_in", "Valid gossip messages delivered, by topic",
    ["topic"], registry=REGISTRY,
)
GOSSIP_MESSAGES_OUT = Counter(
    "icn_gossip_messages_out", "Gossip messages published, by topic",
    ["topic"], registry=REGISTRY,
)
PEERS = Gauge("icn_peers", "Connected peers", registry=REGISTRY)
MESH_SIZE = Gauge("icn_gossip_mesh_peers", "Peers in the GossipSub mesh, by topic", ["topic"], registry=REGISTRY)
SYNC_ROUNDS = Counter(
    "icn_sync_rounds", "Anti-entropy sync rounds, by outcome", ["outcome"], registry=REGISTRY,
)
SYNC_ITEMS = Counter(
    "icn_sync_items", "Items pulled by sync, by kind", ["kind"], registry=REGISTRY,
)
