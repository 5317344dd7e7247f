"""Replicated usage: a signed, state-based CRDT of per-member counters, durable in SQLite."""

from .crdt import (
    MergeResult,
    Reason,
    SignedUsageEntry,
    UsageDelta,
    UsageEntry,
    UsageRejection,
    UsageState,
    merge_entries,
)
from .store import SCHEMA_VERSION, StoreError, UsageStore
from .tracker import UsageTracker

__all__ = [
    "MergeResult", "Reason", "SCHEMA_VERSION", "SignedUsageEntry", "StoreError", "UsageDelta",
    "UsageEntry", "UsageRejection", "UsageState", "UsageStore", "UsageTracker", "merge_entries",
]
