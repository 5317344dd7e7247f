"""A tiny comparison language over report figures (never ``eval``).

    expect := clause (("and" | "or") clause)*        ("and" binds tighter)
    clause := "not"? (value OP value | "(" expect ")")
    value  := term ("+" term)*
    term   := atom ("*" atom)*
    atom   := number | "string" | true | false | null | path
    path   := name ("." name)*           names may hold letters, digits, _ - : @
    OP     := == != < <= > >=

A path names a figure in the report (``tasks.lost``,
``tasks.by_member.did:icn:alice.completed``); a path the report does not hold
fails the assertion with "unknown figure", it never raises.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

OPS = ("==", "!=", "<=", ">=", "<", ">")

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w:@-]))
  | (?P<str>"[^"]*"|'[^']*')
  | (?P<op>==|!=|<=|>=|<|>)
  | (?P<star>\*)
  | (?P<plus>\+)
  | (?P<lp>\()
  | (?P<rp>\))
  | (?P<path>[A-Za-z_][\w:@-]*(?:\.[\w:@-]+)*)
""", re.VERBOSE)


class AssertionSyntaxError(ValueError):
    """An expectation that does not parse; says where."""


class UnknownFigure(KeyError):
    pass


@dataclass(frozen=True)
class Lit:
    value: Any


@dataclass(frozen=True)
class Path:
    name: str


@dataclass(frozen=True)
class Product:
    items: tuple[Any, ...]


@dataclass(frozen=True)
class Sum:
    items: tuple[Any, ...]


#: Arithmetic nodes: the start value, the operation and its verb for errors.
_ARITHMETIC = {Product: (1, operator.mul, "multiply"), Sum: (0, operator.add, "add")}


@dataclass(frozen=True)
class Compare:
    left: Any
    op: str
    right: Any


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and" | "or"
    items: tuple[Any, ...]


@dataclass(frozen=True)
class Not:
    item: Any


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise AssertionSyntaxError(f"unexpected {text[pos:pos + 10]!r} at column {pos + 1} in {text!r}")
        kind = m.lastgroup
        if kind != "ws":
            val = m.group(kind)
            if kind == "path" and val in ("and", "or", "not", "true", "false", "null"):
                kind = val if val in ("and", "or", "not") else "kw"
            out.append((kind, val, pos))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, kind: str | None = None) -> tuple[str, str, int]:
        tok = self.peek()
        if tok is None:
            raise AssertionSyntaxError(f"unexpected end of {self.text!r}")
        if kind is not None and tok[0] != kind:
            raise AssertionSyntaxError(f"expected {kind} at column {tok[2] + 1} in {self.text!r}, got {tok[1]!r}")
        self.i += 1
        return tok

    def parse(self) -> Any:
        node = self.disj()
        if self.peek() is not None:
            tok = self.peek()
            raise AssertionSyntaxError(f"unexpected {tok[1]!r} at column {tok[2] + 1} in {self.text!r}")
        return node

    def _chain(self, part: Callable[[], Any], kind: str, build: Callable[[tuple[Any, ...]], Any]) -> Any:
        """``part (kind part)*``: one part alone, or ``build`` of them all."""
        items = [part()]
        while (t := self.peek()) and t[0] == kind:
            self.take()
            items.append(part())
        return items[0] if len(items) == 1 else build(tuple(items))

    def disj(self) -> Any:
        return self._chain(self.conj, "or", lambda items: BoolOp("or", items))

    def conj(self) -> Any:
        return self._chain(self.clause, "and", lambda items: BoolOp("and", items))

    def clause(self) -> Any:
        t = self.peek()
        if t and t[0] == "not":
            self.take()
            return Not(self.clause())
        if t and t[0] == "lp":
            self.take()
            node = self.disj()
            self.take("rp")
            return node
        left = self.value()
        t = self.peek()
        if t is None or t[0] != "op":
            where = f"column {t[2] + 1}" if t else "the end"
            raise AssertionSyntaxError(f"expected a comparison (== != < <= > >=) at {where} in {self.text!r}")
        op = self.take()[1]
        return Compare(left, op, self.value())

    def value(self) -> Any:
        return self._chain(self.term, "plus", Sum)

    def term(self) -> Any:
        return self._chain(self.atom, "star", Product)

    def atom(self) -> Any:
        kind, val, pos = self.take()
        if kind == "num":
            return Lit(float(val) if any(c in val for c in ".eE") else int(val))
        if kind == "str":
            return Lit(val[1:-1])
        if kind == "kw":
            return Lit({"true": True, "false": False, "null": None}[val])
        if kind == "path":
            return Path(val)
        raise AssertionSyntaxError(f"expected a value at column {pos + 1} in {self.text!r}, got {val!r}")


def parse_expression(text: str) -> Any:
    if not text.strip():
        raise AssertionSyntaxError("empty expectation")
    return _Parser(text).parse()


def lookup(figures: Any, path: str) -> Any:
    """``a.b.c`` in nested dicts (a key may itself contain dots: the longest match wins);
    a number picks an item of a list (``clock.advances.0.to_month``)."""
    parts = path.split(".")
    cur = figures
    i = 0
    while i < len(parts):
        if isinstance(cur, list) and parts[i].isdigit():
            if int(parts[i]) >= len(cur):
                raise UnknownFigure(path)
            cur = cur[int(parts[i])]
            i += 1
            continue
        if not isinstance(cur, dict):
            raise UnknownFigure(path)
        for j in range(len(parts), i, -1):
            key = ".".join(parts[i:j])
            if key in cur:
                cur = cur[key]
                i = j
                break
        else:
            raise UnknownFigure(path)
    return cur


def _value(node: Any, figures: Any, seen: dict[str, Any]) -> Any:
    if isinstance(node, Lit):
        return node.value
    if isinstance(node, Path):
        v = lookup(figures, node.name)
        seen[node.name] = v
        return v
    arithmetic = _ARITHMETIC.get(type(node))
    if arithmetic is not None:
        out, op, verb = arithmetic
        for item in node.items:
            v = _value(item, figures, seen)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise TypeError(f"cannot {verb} {v!r}")
            out = op(out, v)
        return out
    raise TypeError(node)


def _compare(a: Any, op: str, b: Any) -> bool:
    if op == "==":
        if isinstance(a, float) or isinstance(b, float):
            try:
                return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
            except TypeError:
                return False
        return a == b
    if op == "!=":
        return not _compare(a, "==", b)
    if a is None or b is None:
        return False
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def _eval(node: Any, figures: Any, seen: dict[str, Any]) -> bool:
    if isinstance(node, BoolOp):
        results = [_eval(x, figures, seen) for x in node.items]
        return all(results) if node.op == "and" else any(results)
    if isinstance(node, Not):
        return not _eval(node.item, figures, seen)
    return _compare(_value(node.left, figures, seen), node.op, _value(node.right, figures, seen))


def evaluate(text: str, figures: Any) -> tuple[bool, str]:
    """(passed, detail): the detail lists the figures the expectation read."""
    try:
        tree = parse_expression(text)
    except AssertionSyntaxError as exc:
        return False, f"syntax error: {exc}"
    seen: dict[str, Any] = {}
    try:
        ok = _eval(tree, figures, seen)
    except UnknownFigure as exc:
        return False, f"unknown figure {exc.args[0]!r}"
    except TypeError as exc:
        return False, f"cannot compare: {exc}"
    detail = ", ".join(f"{k} = {_short(v)}" for k, v in seen.items())
    return ok, detail


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."
