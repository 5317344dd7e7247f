"""The domain core: pure pydantic models and value functions. No I/O, no trio."""

from .clock import Clock, FakeClock, SystemClock, month_key
from .decision import CapabilityRequirement, PlacementConstraints, PolicyDecision, Violation
from .enums import EnforcementMode, ScopeLevel, TaskPriority
from .policy import (
    CoopSchedulingPolicy,
    DataSovereignty,
    ExecutorFilter,
    MemberPriority,
    MemberQuota,
    RequireCapability,
    SchedulingRule,
    TimeWindow,
)
from .task import Capacity, ComputeTask, ExecutorInfo, LocalityHints, ResourceProfile
from .usage import MemberUsage
from .versions import parse_version, version_at_least

__all__ = [
    "Capacity", "CapabilityRequirement", "Clock", "ComputeTask", "CoopSchedulingPolicy",
    "DataSovereignty", "EnforcementMode", "ExecutorFilter", "ExecutorInfo", "FakeClock",
    "LocalityHints", "MemberPriority", "MemberQuota", "MemberUsage", "PlacementConstraints",
    "PolicyDecision", "RequireCapability", "ResourceProfile", "SchedulingRule", "ScopeLevel",
    "SystemClock", "TaskPriority", "TimeWindow", "Violation", "month_key", "parse_version",
    "version_at_least",
]
