"""Metrics of the replicated usage store (on the node's registry)."""

from __future__ import annotations

from prometheus_client import Counter

from icn_p2p.metrics import REGISTRY

ENTRIES_REJECTED = Counter(
    "icn_usage_entries_rejected", "Usage entries refused at merge, by reason",
    ["reason"], registry=REGISTRY,
)
ENTRIES_MERGED = Counter(
    "icn_usage_entries_merged", "Usage entries received at merge, by outcome (accepted, unchanged)",
    ["outcome"], registry=REGISTRY,
)
