"""The scenario file: TOML validated with pydantic, errors that name the field path.

Any number in a scenario may be written once (``count = 20``) or per scale
(``count = {small = 20, full = 400}``); :func:`load_scenario` picks the value
for the requested scale before validation.
"""

from __future__ import annotations

import json
import tomllib
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from icn_p2p.core.policy import CoopSchedulingPolicy

from .assertions import AssertionSyntaxError, parse_expression
from .modules import parse_module

SCALES = ("small", "full")
REPO_ROOT = Path(__file__).resolve().parent.parent
POLICY_DIR = REPO_ROOT / "configs" / "policies"
SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"

Topology = Literal["line", "ring", "random", "full"]
Priority = Literal["Low", "Normal", "High", "Critical"]
Scope = Literal["Local", "Cell", "Org", "Federation", "Commons"]
Selector = Union[int, str]


class ScenarioError(ValueError):
    """A scenario that cannot be run: every problem with its field path."""


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScenarioMeta(_M):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    seed: int = 0
    topology: Topology = "random"
    degree: int = Field(default=3, ge=1, le=32)
    scales: list[Literal["small", "full"]] = Field(default_factory=lambda: list(SCALES))
    drain_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    settle_s: float = Field(default=0.0, ge=0, le=60)
    narrate: list[str] = Field(default_factory=list)  # lines printed before the run


class NodeGroup(_M):
    """``count`` identical nodes; they are numbered in file order."""

    name: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    count: int = Field(default=1, ge=1, le=500)
    roles: list[Literal["submitter", "executor"]] = Field(default_factory=lambda: ["submitter", "executor"])
    region: str | None = None
    capabilities: dict[str, str] = Field(default_factory=dict)
    trust: float | None = Field(default=None, ge=0, le=1)  # how much the others trust these nodes
    concurrency: int | None = Field(default=None, ge=1, le=256)
    coops: list[str] | None = None  # default: every coop
    mesh: dict[str, Any] = Field(default_factory=dict)  # NodeConfig.mesh fields
    compute: dict[str, Any] = Field(default_factory=dict)  # NodeConfig.compute fields
    config: dict[str, Any] = Field(default_factory=dict)  # other NodeConfig fields (offer_window_ms, ...)

    @field_validator("config")
    @classmethod
    def _not_managed(cls, v: dict[str, Any]) -> dict[str, Any]:
        managed = {"key_file", "data_dir", "listen", "bootstrap", "roles", "coops", "region", "capabilities"}
        bad = sorted(set(v) & managed)
        if bad:
            raise ValueError(f"{bad} are set by the simulator (use the group's own fields)")
        return v


class Coop(_M):
    id: str = Field(min_length=1, max_length=128, pattern=r"^[^/]+$")
    policy: str | dict[str, Any]  # a file under configs/policies/ (or a path), or the policy inline
    patch: dict[str, Any] = Field(default_factory=dict)  # deep-merged over the policy
    publisher: Selector = 0

    def load_policy(self) -> dict[str, Any]:
        """The policy body for this coop, as a development sandbox (no governance domain)."""
        if isinstance(self.policy, dict):
            body = json.loads(json.dumps(self.policy))
        else:
            path = Path(self.policy)
            candidates = [path] if path.is_absolute() else [POLICY_DIR / path, REPO_ROOT / path]
            for c in candidates:
                if c.is_file():
                    body = json.loads(c.read_text())
                    break
            else:
                raise ValueError(f"policy file {self.policy!r} not found (looked in {POLICY_DIR})")
        body = _deep_merge(body, self.patch)
        body["coop_id"] = self.id
        body["governance_domain"] = None
        CoopSchedulingPolicy.from_dict(body)  # validate now, not at publish time
        return body


class Member(_M):
    id: str = Field(min_length=1, max_length=256)
    name: str | None = None
    coop: str | None = None


class _Action(_M):
    at: float = Field(ge=0, le=3600, description="seconds after the mesh is up")
    note: str | None = None


class SetPolicy(_Action):
    action: Literal["set_policy", "propose_policy"]
    coop: str
    node: Selector | None = None  # default: the coop's publisher
    policy: str | dict[str, Any] | None = None
    patch: dict[str, Any] = Field(default_factory=dict)


class Submit(_Action):
    action: Literal["submit"]
    member: str
    coop: str
    node: Selector | list[Selector] = "submitters"
    rate: float = Field(default=10.0, gt=0, le=10_000)
    count: int | None = Field(default=None, ge=1, le=1_000_000)
    duration: float | None = Field(default=None, gt=0, le=3600)
    module: str = "add"
    fuel: int | None = Field(default=None, ge=1)
    priority: Priority = "Normal"
    tags: list[str] = Field(default_factory=list)
    scope: Scope = "Local"
    label: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$")
    utc_hour: int | None = Field(default=None, ge=0, le=23)  # admission time: today at HH:00 UTC
    deadline_s: float | None = Field(default=None, gt=0, le=3600)
    # one client looping over submit: each submission waits for the node's answer to
    # the one before, so admissions see each other's claims (the rate is then a ceiling)
    sequential: bool = False

    @field_validator("module")
    @classmethod
    def _module(cls, v: str) -> str:
        parse_module(v)
        return v

    @model_validator(mode="after")
    def _amount(self) -> "Submit":
        if (self.count is None) == (self.duration is None):
            raise ValueError("give exactly one of count or duration")
        return self


class Kill(_Action):
    """Kill the selected nodes; ``pick = "busiest"`` kills only the one of them running
    the most tasks right now (waiting up to 5 s for one to run something), so a kill
    lands on work in flight."""

    action: Literal["kill"]
    node: Selector
    signal: Literal["kill", "term"] = "kill"
    pick: Literal["all", "busiest"] = "all"


class Restart(_Action):
    """Restart the selected nodes that are down (the live ones are left alone)."""

    action: Literal["restart"]
    node: Selector


class Partition(_Action):
    action: Literal["partition"]
    groups: list[list[Selector]] = Field(min_length=2)


class Heal(_Action):
    action: Literal["heal"]


class AdvanceClock(_Action):
    """Move every node's clock ahead (system time plus an offset that only grows).

    ``to = "next_month"`` (the default) lands one minute into the next UTC
    calendar month: a new usage key, so the monthly quotas start again.
    ``days`` / ``hours`` move it by that much instead.
    """

    action: Literal["advance_clock"]
    to: Literal["next_month"] | None = None
    days: float | None = Field(default=None, gt=0, le=3660)
    hours: float | None = Field(default=None, gt=0, le=87_840)

    @model_validator(mode="after")
    def _one_amount(self) -> "AdvanceClock":
        given = [k for k in ("to", "days", "hours") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of to, days or hours (got {', '.join(given)})")
        if not given:
            self.to = "next_month"
        return self

    def amount_ms(self, now_ms: int) -> int:
        """How far to move a clock that reads ``now_ms``."""
        if self.days is not None:
            return int(self.days * 86_400_000)
        if self.hours is not None:
            return int(self.hours * 3_600_000)
        dt = datetime.fromtimestamp(now_ms / 1000, tz=timezone.utc)
        year, month = (dt.year + 1, 1) if dt.month == 12 else (dt.year, dt.month + 1)
        target = int(datetime(year, month, 1, tzinfo=timezone.utc).timestamp() * 1000) + 60_000
        return target - now_ms


class Wait(_Action):
    """Pause the timeline. ``tasks_done``: every submitted task has reached a final
    state. ``settled``: that, and then every live node holds the same usage view, so
    the next admission on any node sees every finished task's CPU and released slot."""

    action: Literal["wait"]
    seconds: float = Field(default=0, ge=0, le=3600)
    until: Literal["tasks_done", "settled", "time"] = "time"


Action = Annotated[Union[SetPolicy, Submit, Kill, Restart, Partition, Heal, AdvanceClock, Wait],
                   Field(discriminator="action")]


class Check(_M):
    name: str = Field(min_length=1, max_length=200)
    expect: str

    @field_validator("expect")
    @classmethod
    def _parse(cls, v: str) -> str:
        try:
            parse_expression(v)
        except AssertionSyntaxError as exc:
            raise ValueError(str(exc)) from None
        return v


class Scenario(_M):
    scenario: ScenarioMeta
    nodes: list[NodeGroup] = Field(min_length=1)
    coops: list[Coop] = Field(min_length=1)
    members: list[Member] = Field(default_factory=list)
    timeline: list[Action] = Field(default_factory=list)
    assertions: list[Check] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> "Scenario":
        names = [g.name for g in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError("node group names must be unique")
        coop_ids = {c.id for c in self.coops}
        for g in self.nodes:
            for c in g.coops or []:
                if c not in coop_ids:
                    raise ValueError(f"node group {g.name!r} serves unknown coop {c!r}")
        total = self.total_nodes
        for i, a in enumerate(self.timeline):
            coop = getattr(a, "coop", None)
            if coop is not None and coop not in coop_ids:
                raise ValueError(f"timeline[{i}] ({a.action}): unknown coop {coop!r}")
            for sel in _selectors_of(a):
                self.resolve(sel, where=f"timeline[{i}] ({a.action})")
        for c in self.coops:
            self.resolve(c.publisher, where=f"coop {c.id!r} publisher")
        return self

    @property
    def total_nodes(self) -> int:
        return sum(g.count for g in self.nodes)

    def group_of(self, index: int) -> tuple[NodeGroup, int]:
        for g in self.nodes:
            if index < g.count:
                return g, index
            index -= g.count
        raise IndexError(index)

    def node_name(self, index: int) -> str:
        g, i = self.group_of(index)
        return f"{g.name}{i}" if g.count > 1 else g.name

    def resolve(self, sel: Selector | list[Selector], *, where: str = "selector") -> list[int]:
        """Node indices named by ``sel``: an index, ``"*"``, ``"submitters"``, ``"executors"``,
        a group name, or ``"group.k"`` (the k-th node of a group)."""
        if isinstance(sel, list):
            out: list[int] = []
            for s in sel:
                out.extend(i for i in self.resolve(s, where=where) if i not in out)
            return out
        total = self.total_nodes
        if isinstance(sel, int):
            if not 0 <= sel < total:
                raise ValueError(f"{where}: node {sel} out of range (0..{total - 1})")
            return [sel]
        if sel == "*":
            return list(range(total))
        if sel in ("submitters", "executors"):
            role = sel[:-1]
            return [i for i in range(total) if role in self.group_of(i)[0].roles]
        name, _, k = sel.partition(".")
        start = 0
        for g in self.nodes:
            if g.name == name:
                if not k:
                    return list(range(start, start + g.count))
                if not k.isdigit() or int(k) >= g.count:
                    raise ValueError(f"{where}: {sel!r}: group {name!r} has nodes .0 to .{g.count - 1}")
                return [start + int(k)]
            start += g.count
        raise ValueError(f"{where}: unknown node selector {sel!r} (groups: {[g.name for g in self.nodes]})")

    def coops_of(self, index: int) -> list[str]:
        g, _ = self.group_of(index)
        return list(g.coops) if g.coops is not None else [c.id for c in self.coops]

    def coop(self, coop_id: str) -> Coop:
        return next(c for c in self.coops if c.id == coop_id)


def _selectors_of(a: Any) -> list[Any]:
    if isinstance(a, Partition):
        return [s for g in a.groups for s in g]
    node = getattr(a, "node", None)
    return [] if node is None else [node]


def _deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in patch.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _is_scaled(v: Any) -> bool:
    return isinstance(v, dict) and bool(v) and set(v) <= set(SCALES)


def apply_scale(data: Any, scale: str) -> Any:
    """Replace every ``{small = a, full = b}`` by the value for ``scale``."""
    if _is_scaled(data):
        if scale not in data:
            raise ScenarioError(f"value {data!r} has no entry for scale {scale!r}")
        return apply_scale(data[scale], scale)
    if isinstance(data, dict):
        return {k: apply_scale(v, scale) for k, v in data.items()}
    if isinstance(data, list):
        return [apply_scale(v, scale) for v in data]
    return data


def format_errors(exc: ValidationError, source: str) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        # drop the discriminator tag pydantic inserts for unions ("timeline.0.submit.rate")
        where = ".".join(loc) or "(root)"
        problems.append(f"  {where}: {err['msg']}")
    return f"{source}: invalid scenario:\n" + "\n".join(problems)


def parse_scenario(data: dict[str, Any], *, scale: str = "small", source: str = "scenario") -> Scenario:
    if scale not in SCALES:
        raise ScenarioError(f"unknown scale {scale!r} (use one of {', '.join(SCALES)})")
    data = apply_scale(data, scale)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(format_errors(exc, source)) from None
    for c in scenario.coops:
        try:
            c.load_policy()
        except (ValueError, ValidationError) as exc:
            first = str(exc).splitlines()[0]
            raise ScenarioError(f"{source}: invalid scenario:\n  coops.{c.id}.policy: {first}") from None
    return scenario


def load_scenario(path: str | Path, *, scale: str = "small") -> Scenario:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ScenarioError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    return parse_scenario(data, scale=scale, source=str(path))


def shipped_scenarios() -> list[Path]:
    return sorted(SCENARIO_DIR.glob("*.toml"))
