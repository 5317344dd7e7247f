"""The assertion language: parsing, evaluation, and failures that never raise."""

import pytest

from simulations.assertions import AssertionSyntaxError, evaluate, lookup, parse_expression

FIGURES = {
    "tasks": {"lost": 0, "completed": 9, "admitted": 10,
              "by_member": {"did:icn:alice": {"completed": 4}},
              "by_label": {"maintenance-day": {"rejected_by": {"TimeWindow": 2}}}},
    "propagation": {"reached_fraction": 1.0, "p99_ms": 41.5},
    "usage_converged": True,
    "label": "Critical",
    "missing": None,
    "quota": {"c": {"did:icn:x.y": {"overshoot_pct": 12.5}}},
}


@pytest.mark.parametrize("expr,expected", [
    ("tasks.lost == 0", True),
    ("tasks.lost != 0", False),
    ("propagation.reached_fraction == 1.0", True),
    ("propagation.p99_ms < 500", True),
    ("propagation.p99_ms >= 41.5 and propagation.p99_ms <= 41.5", True),
    ("tasks.completed == tasks.admitted", False),
    ("tasks.completed >= 0.9 * tasks.admitted", True),
    ("tasks.completed > 0.95 * tasks.admitted", False),
    ("tasks.lost == 1 or usage_converged == true", True),
    ("not (tasks.lost == 0)", False),
    ("tasks.by_member.did:icn:alice.completed == 4", True),
    ("tasks.by_label.maintenance-day.rejected_by.TimeWindow == 2", True),
    ('label == "Critical"', True),
    ("label == 'Low'", False),
    ("missing == null", True),
    ("missing < 3", False),
    ("quota.c.did:icn:x.y.overshoot_pct < 20", True),
    ("tasks.lost == -1", False),
    ("tasks.completed <= tasks.lost + 9", True),
    ("tasks.completed <= 2 * tasks.lost + 8.5", False),
    ("tasks.completed + 1 == tasks.admitted", True),
])
def test_evaluates(expr, expected):
    passed, detail = evaluate(expr, FIGURES)
    assert passed is expected, detail


def test_detail_names_the_figures_read():
    passed, detail = evaluate("tasks.completed == tasks.admitted", FIGURES)
    assert not passed
    assert "tasks.completed = 9" in detail and "tasks.admitted = 10" in detail


def test_unknown_figure_fails_without_raising():
    passed, detail = evaluate("tasks.nope == 0", FIGURES)
    assert not passed and "unknown figure 'tasks.nope'" in detail
    passed, detail = evaluate("tasks.lost.deeper == 0", FIGURES)
    assert not passed and "unknown figure" in detail


def test_bad_types_fail_without_raising():
    passed, detail = evaluate('label < 3', FIGURES)
    assert not passed
    passed, detail = evaluate('2 * label == 3', FIGURES)
    assert not passed and "cannot" in detail
    passed, detail = evaluate('label + 1 == 3', FIGURES)
    assert not passed and "cannot add" in detail


@pytest.mark.parametrize("expr,where", [
    ("", "empty"),
    ("tasks.lost", "expected a comparison"),
    ("tasks.lost ==", "unexpected end"),
    ("tasks.lost = 0", "unexpected"),
    ("(tasks.lost == 0", "unexpected end"),
    ("tasks.lost == 0 0", "unexpected"),
    ("__import__('os') == 1", "expected a comparison"),
    ("tasks.lost == 0; rm", "unexpected"),
    ("== 3", "expected a value"),
    ("tasks.lost + == 3", "expected a value"),
])
def test_syntax_errors_say_where(expr, where):
    with pytest.raises(AssertionSyntaxError, match=where):
        parse_expression(expr)
    passed, detail = evaluate(expr, FIGURES)
    assert not passed and detail.startswith("syntax error")


def test_lookup_longest_key_with_dots():
    assert lookup({"a.b": {"c": 1}, "a": {"b": {"c": 2}}}, "a.b.c") == 1


def test_lookup_indexes_lists():
    figures = {"clock": {"advances": [{"to_month": "2026-12", "from_month": "2026-11"}]}}
    assert lookup(figures, "clock.advances.0.to_month") == "2026-12"
    passed, _ = evaluate("clock.advances.0.to_month != clock.advances.0.from_month", figures)
    assert passed
    passed, detail = evaluate("clock.advances.1.to_month == null", figures)
    assert not passed and "unknown figure" in detail
