"""Output shared by the CLI commands: readable errors, JSON, rich consoles.

Validation errors are shown as the JSON path of the bad field and why, in
words a coop member can act on (``rules[0].TimeWindow.allowed_hours[2]: must
be <= 23 (got 24)``), never as a traceback.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

__all__ = [
    "BadInput",
    "Issue",
    "console",
    "emit_json",
    "err_console",
    "issues_from_validation",
    "json_path",
    "load_json_file",
]


class Issue(tuple):
    """``(path, message)`` of one bad field."""

    __slots__ = ()

    def __new__(cls, path: str, message: str) -> "Issue":
        return super().__new__(cls, (path, message))

    @property
    def path(self) -> str:
        return self[0]

    @property
    def message(self) -> str:
        return self[1]

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class BadInput(Exception):
    """A file the command cannot use: which file and every reason."""

    def __init__(self, file: str, issues: list[Issue]) -> None:
        self.file = file
        self.issues = issues
        super().__init__("; ".join(f"{i.path}: {i.message}" for i in issues))

    def lines(self) -> list[str]:
        return [f"{self.file}: {i.path}: {i.message}" for i in self.issues]


def console():
    """A rich console on the current stdout (resolved at call time, so tests capture it)."""
    from rich.console import Console

    return Console(soft_wrap=True, highlight=False, emoji=False)


def err_console():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True, highlight=False, emoji=False)


def emit_json(obj: Any) -> None:
    """Exactly one JSON document on stdout, nothing else."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def json_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("rules", 0, "TimeWindow", "allowed_hours", 2)`` -> ``rules[0].TimeWindow.allowed_hours[2]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier():
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(str(part))}]"
    return out or "$"


def _show(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    return json.dumps(value, default=str)


_TYPE_WORDS = {
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "none_required": "must be null",
}


def _message(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    value = err.get("input")
    got = f" (got {_show(value)})"
    if isinstance(value, float) and not math.isfinite(value) and kind in (
        "greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number", "value_error",
    ):
        return f"must be a finite number{got}"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind == "less_than_equal":
        return f"must be <= {ctx.get('le')}{got}"
    if kind == "less_than":
        return f"must be < {ctx.get('lt')}{got}"
    if kind == "greater_than_equal":
        return f"must be >= {ctx.get('ge')}{got}"
    if kind == "greater_than":
        return f"must be > {ctx.get('gt')}{got}"
    if kind == "enum":
        return f"must be one of {ctx.get('expected', '')}{got}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected', '')}{got}"
    if kind == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"is too short{got}"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind in _TYPE_WORDS:
        return f"{_TYPE_WORDS[kind]}{got}"
    if kind == "value_error":
        msg = str(err.get("msg", ""))
        return msg.removeprefix("Value error, ")
    if kind == "json_invalid":
        return f"invalid JSON: {ctx.get('error', err.get('msg'))}"
    return f"{err.get('msg', 'invalid')}{got}"


def issues_from_validation(exc: ValidationError) -> list[Issue]:
    """Every error of ``exc`` as (JSON path, readable reason)."""
    return [Issue(json_path(e.get("loc", ())), _message(e)) for e in exc.errors()]


def load_json_file(path: Path, what: str = "file") -> Any:
    """Parse a JSON file or raise ``BadInput`` naming line and column."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(name, [Issue("$", f"no such {what}")]) from None
    except IsADirectoryError:
        raise BadInput(name, [Issue("$", "is a directory, not a JSON file")]) from None
    except UnicodeDecodeError as e:
        raise BadInput(name, [Issue("$", f"is not UTF-8 text ({e.reason} at byte {e.start})")]) from None
    except OSError as e:
        raise BadInput(name, [Issue("$", f"cannot be read: {e.strerror or e}")]) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(
            name, [Issue("$", f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}")]
        ) from None
    except RecursionError:
        raise BadInput(name, [Issue("$", "invalid JSON: nested too deeply")]) from None
