"""Readable validation messages and JSON file loading used by the offline commands."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from icn_p2p.cli.output import BadInput, Issue, issues_from_validation, json_path, load_json_file


class M(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    a: int = Field(0, lt=10, gt=-10)
    s: str = Field("x", max_length=3, min_length=2)
    b: bool = False
    lst: list[int] = []
    kind: Literal["k"] = "k"
    n: None = None
    f: float = 0.0


def messages(**data) -> list[str]:
    with pytest.raises(ValidationError) as info:
        M.model_validate(data)
    return [i.message for i in issues_from_validation(info.value)]


def test_messages_are_readable():
    assert messages(a=10) == ["must be < 10 (got 10)"]
    assert messages(a=-10) == ["must be > -10 (got -10)"]
    assert messages(s="abcd") == ["must be at most 3 characters"]
    assert messages(s="a") == ['is too short (got string "a")']
    assert messages(b="yes") == ['must be true or false (got string "yes")']
    assert messages(lst={}) == ["must be a list (got an object)"]
    assert messages(lst=[[1]]) == ["must be an integer (got a list)"]
    assert messages(kind="j") == ["must be 'k' (got string \"j\")"]
    assert messages(n=True) == ["must be null (got true)"]
    assert messages(f=None) == ["must be a number (got null)"]
    assert messages(zz=1) == ["is not a known field"]
    assert messages(a=2**70) == ["must be < 10 (got 1180591620717411303424)"]


def test_unknown_error_types_fall_back_to_pydantic_text():
    class D(BaseModel):
        d: dict[str, int]

    with pytest.raises(ValidationError) as info:
        D.model_validate({"d": {"k": "x" * 3}})
    (issue,) = issues_from_validation(info.value)
    assert issue.path == "d.k" and "integer" in issue.message


def test_json_path():
    assert json_path(()) == "$"
    assert json_path(("rules", 0, "TimeWindow", "allowed_hours", 2)) == "rules[0].TimeWindow.allowed_hours[2]"
    assert json_path(("member_quotas", "did:icn:g", "max_priority")) == 'member_quotas["did:icn:g"].max_priority'
    assert json_path((0, "x")) == "[0].x"


def test_load_json_file_errors(tmp_path):
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(BadInput) as info:
        load_json_file(latin)
    assert "not UTF-8" in info.value.issues[0].message
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BadInput) as info:
        load_json_file(deep)
    assert "nested too deeply" in info.value.issues[0].message
    locked = tmp_path / "locked.json"
    locked.write_text("{}")
    locked.chmod(0)
    try:
        try:
            load_json_file(locked)
        except BadInput as e:
            assert "cannot be read" in e.issues[0].message
    finally:
        locked.chmod(0o600)
    bad = BadInput("f.json", [Issue("a", "x"), Issue("b", "y")])
    assert str(bad) == "a: x; b: y" and bad.lines() == ["f.json: a: x", "f.json: b: y"]
    assert Issue("p", "m").as_dict() == {"path": "p", "message": "m"}
