"""Ranked enums, version comparison and the UTC clock helpers."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from icn_p2p.core.clock import (
    FakeClock,
    SystemClock,
    month_key,
    month_start_ms,
    ms_from_datetime,
    utc_datetime,
    utc_hour,
    weekday_from_sunday,
)
from icn_p2p.core.enums import EnforcementMode, ScopeLevel, TaskPriority
from icn_p2p.core.versions import parse_version, version_at_least


def ms(*args) -> int:
    return ms_from_datetime(datetime(*args, tzinfo=timezone.utc))


def test_priorities_order_by_rank_not_name():
    assert TaskPriority.LOW < TaskPriority.NORMAL < TaskPriority.HIGH < TaskPriority.CRITICAL
    assert [p.rank for p in TaskPriority] == [0, 1, 2, 3]
    assert sorted([TaskPriority.CRITICAL, TaskPriority.LOW, TaskPriority.HIGH]) == [
        TaskPriority.LOW, TaskPriority.HIGH, TaskPriority.CRITICAL]
    assert TaskPriority.HIGH >= TaskPriority.HIGH and TaskPriority.LOW <= TaskPriority.NORMAL
    assert max(TaskPriority) is TaskPriority.CRITICAL
    assert TaskPriority.from_rank(9) is TaskPriority.CRITICAL
    assert TaskPriority.from_rank(-2) is TaskPriority.LOW
    assert ScopeLevel.LOCAL < ScopeLevel.COMMONS and ScopeLevel.COMMONS.rank == 4


def test_enums_serialise_as_their_rust_names_and_hash_like_them():
    assert str(TaskPriority.HIGH) == "High" and str(EnforcementMode.MONITORING) == "Monitoring"
    assert TaskPriority("Normal") is TaskPriority.NORMAL
    assert {TaskPriority.LOW: 1}["Low"] == 1
    assert hash(TaskPriority.HIGH) == hash("High")


def test_comparing_different_enums_is_an_error():
    with pytest.raises(TypeError):
        TaskPriority.LOW < ScopeLevel.LOCAL  # noqa: B015
    with pytest.raises(TypeError):
        TaskPriority.LOW > 1  # noqa: B015
    with pytest.raises(TypeError):
        TaskPriority.LOW <= 1  # noqa: B015
    with pytest.raises(TypeError):
        TaskPriority.LOW >= 1  # noqa: B015


@pytest.mark.parametrize(
    "have, need, ok",
    [
        ("1.10", "1.9", True),
        ("1.9", "1.10", False),
        ("2", "2.0", True),
        ("2.0.0", "2", True),
        ("0.9", "1.0", False),
        ("v1.2", "1.2", True),
        ("1.2-rc1", "1.2", True),
        ("1.0", None, True),
        (None, "1.0", False),
        ("garbage", "1.0", False),
    ],
)
def test_versions_compare_as_versions(have, need, ok):
    assert version_at_least(have, need) is ok


def test_parse_version():
    assert parse_version("1.10") > parse_version("1.9")
    assert parse_version("2.0") == parse_version("2")
    for bad in ["", "one", "1..2", "1.x"]:
        with pytest.raises(ValueError):
            parse_version(bad)


def test_month_key_edges_in_utc():
    assert month_key(ms(2026, 11, 30, 23, 59, 59, 999_000)) == "2026-11"
    assert month_key(ms(2026, 12, 1)) == "2026-12"
    assert month_key(ms(2026, 12, 31, 23, 59, 59)) == "2026-12"
    assert month_key(ms(2027, 1, 1)) == "2027-01"
    assert month_key(ms(2028, 2, 29, 12)) == "2028-02"
    assert month_key(ms(2026, 12, 1) - 1) == "2026-11"
    assert month_start_ms("2026-12") == ms(2026, 12, 1)
    assert month_key(0) == "1970-01"


def test_weekday_and_hour_edges_in_utc():
    # 2026-11-22 is a Sunday, 2026-11-28 a Saturday
    assert weekday_from_sunday(ms(2026, 11, 22)) == 0
    assert weekday_from_sunday(ms(2026, 11, 22) - 1) == 6
    assert weekday_from_sunday(ms(2026, 11, 28, 23, 59)) == 6
    assert weekday_from_sunday(ms(2026, 11, 23)) == 1
    assert weekday_from_sunday(0) == 4  # 1970-01-01 was a Thursday
    assert utc_hour(ms(2026, 11, 22, 23, 59, 59)) == 23
    assert utc_hour(ms(2026, 11, 23)) == 0
    # an offset time is converted, not read as local time
    assert ms_from_datetime(datetime.fromisoformat("2026-11-22T01:00:00+02:00")) == ms(2026, 11, 21, 23)
    assert ms_from_datetime(datetime(2026, 11, 22, 5)) == ms(2026, 11, 22, 5)  # naive = UTC
    assert utc_datetime(ms(2026, 11, 22, 5)).hour == 5


def test_clocks():
    c = FakeClock(1000)
    c.advance(500)
    assert c.now_ms() == 1500
    c.set(10)
    assert c.now_ms() == 10
    with pytest.raises(ValueError):
        c.advance(-1)
    assert SystemClock().now_ms() > ms(2020, 1, 1)
