"""Node configuration: one TOML file, validated, with errors that name the field.

Environment variables ``ICN_<FIELD>`` (nested with ``__``) override the file,
so a container can change a port without editing the config.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from multiaddr import Multiaddr
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from icn_p2p.api.defaults import DEFAULT_RPC_HOST, DEFAULT_RPC_PORT

Role = Literal["submitter", "executor"]


class ConfigError(ValueError):
    """A config that cannot be used: every problem with its field path and reason."""


class TrustSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_trust: float = Field(default=0.0, ge=0.0, le=1.0)
    default_trust: float = Field(default=0.5, ge=0.0, le=1.0)
    peers: dict[str, float] = Field(default_factory=dict)  # did -> trust in [0, 1]

    @field_validator("peers")
    @classmethod
    def _range(cls, v: dict[str, float]) -> dict[str, float]:
        for did, t in v.items():
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"trust of {did} must be in [0, 1], got {t}")
        return v


class MeshSettings(BaseModel):
    """Network tuning (defaults suit a cooperative mesh of 3-100 nodes)."""

    model_config = ConfigDict(extra="forbid")

    max_connections: int = Field(default=64, ge=1, le=10_000)
    gossip_degree: int = Field(default=6, ge=1)
    gossip_degree_low: int = Field(default=4, ge=1)
    gossip_degree_high: int = Field(default=12, ge=1)
    heartbeat_s: float = Field(default=0.5, gt=0, le=60)
    sync_interval_s: float = Field(default=3.0, gt=0, le=3600)
    ping_interval_s: float = Field(default=5.0, gt=0, le=3600)
    rate_per_s: float = Field(default=1000.0, gt=0)
    rate_burst: float = Field(default=5000.0, gt=0)
    ban_seconds: float = Field(default=600.0, ge=0)
    ban_threshold: float = Field(default=100.0, gt=0)
    max_message_bytes: int = Field(default=256 * 1024, ge=1024, le=900 * 1024)
    replay_max_age_s: float = Field(default=600.0, gt=0)
    replay_skew_s: float = Field(default=30.0, ge=0)
    shutdown_grace_s: float = Field(default=2.0, gt=0, le=60)

    @model_validator(mode="after")
    def _degrees(self) -> "MeshSettings":
        if not self.gossip_degree_low <= self.gossip_degree <= self.gossip_degree_high:
            raise ValueError("gossip degrees must satisfy low <= degree <= high")
        return self


class ComputeSettings(BaseModel):
    """How this node submits and executes tasks."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int = Field(default=2, ge=1, le=256)
    max_queued: int = Field(default=1000, ge=1)
    memory_limit_mb: int = Field(default=64, ge=1, le=4096)
    wall_ms: int = Field(default=10_000, ge=10, le=3_600_000)
    want_offers: int = Field(default=3, ge=1, le=100)
    max_attempts: int = Field(default=3, ge=1, le=20)
    default_deadline_ms: int = Field(default=60_000, ge=100)
    reannounce_ms: int = Field(default=500, ge=10)
    reannounce_max_ms: int = Field(default=5_000, ge=10)
    result_grace_ms: int = Field(default=2_000, ge=0)
    claim_timeout_ms: int = Field(default=5_000, ge=10)
    accept_grace_ms: int = Field(default=20, ge=0, le=10_000)
    probe_interval_ms: int = Field(default=1_000, ge=10)
    usage_flush_ms: int = Field(default=1_000, ge=0, le=60_000)
    announce_interval_ms: int = Field(default=80, ge=0, le=1_000)
    announce_refresh_ms: int = Field(default=5_000, ge=0, le=600_000)
    probe_misses: int = Field(default=3, ge=1)
    fuel_per_credit: int = Field(default=1_000_000, ge=1)
    cpu_cores: float = Field(default=2.0, gt=0)
    memory_mb: int = Field(default=2048, gt=0)
    blobs: list[str] = Field(default_factory=list)


class NodeConfig(BaseSettings):
    """Everything one node needs to start."""

    model_config = SettingsConfigDict(env_prefix="ICN_", env_nested_delimiter="__", extra="forbid")

    key_file: Path
    data_dir: Path
    listen: list[str] = Field(default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"])
    bootstrap: list[str] = Field(default_factory=list)
    region: str | None = None
    capabilities: dict[str, str] = Field(default_factory=dict)
    roles: list[Role] = Field(default_factory=lambda: ["submitter", "executor"])
    coops: list[str] = Field(default_factory=list)
    trust: TrustSettings = Field(default_factory=TrustSettings)
    rpc_host: str = DEFAULT_RPC_HOST
    rpc_port: int = Field(default=DEFAULT_RPC_PORT, ge=0, le=65535)
    pinned_domains: dict[str, str] = Field(default_factory=dict)  # domain name -> genesis id
    coop_domains: dict[str, str] = Field(default_factory=dict)  # coop id -> governing domain
    offer_window_ms: int = Field(default=200, ge=0, le=60_000)
    mesh: MeshSettings = Field(default_factory=MeshSettings)
    compute: ComputeSettings = Field(default_factory=ComputeSettings)

    @field_validator("listen", "bootstrap")
    @classmethod
    def _multiaddrs(cls, v: list[str]) -> list[str]:
        for addr in v:
            try:
                Multiaddr(addr)
            except Exception as exc:
                raise ValueError(f"{addr!r} is not a multiaddr ({exc})") from None
        return v

    @field_validator("bootstrap")
    @classmethod
    def _dialable(cls, v: list[str]) -> list[str]:
        for addr in v:
            if "/p2p/" not in addr:
                raise ValueError(f"bootstrap address {addr!r} must end in /p2p/<peer id>")
        return v

    @field_validator("coops")
    @classmethod
    def _coop_ids(cls, v: list[str]) -> list[str]:
        for coop in v:
            if not coop or "/" in coop or len(coop) > 256:
                raise ValueError(f"coop id {coop!r} must be 1-256 characters without '/'")
        return sorted(set(v))

    @field_validator("roles")
    @classmethod
    def _roles(cls, v: list[str]) -> list[str]:
        return sorted(set(v))

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> "NodeConfig":
        """Load ``path``; relative paths in it resolve against the file's directory."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        data.update(overrides)
        for name in ("key_file", "data_dir"):
            value = data.get(name)
            if isinstance(value, str) and not Path(value).is_absolute():
                data[name] = str(path.parent / value)
        return cls.from_mapping(data, source=str(path))

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: str = "config") -> "NodeConfig":
        try:
            return cls(**data)
        except ValidationError as exc:
            problems = []
            for err in exc.errors(include_url=False):
                where = ".".join(str(p) for p in err["loc"]) or "(root)"
                problems.append(f"{where}: {err['msg']}")
            raise ConfigError(f"{source}: invalid config: " + "; ".join(problems)) from None

    def to_toml(self) -> str:
        """A TOML rendering (for the harness' child processes and ``icnd init``)."""
        return _to_toml(self.model_dump(mode="json"))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if v is None:
        raise ValueError("TOML has no null")
    raise TypeError(type(v))


def _to_toml(data: dict[str, Any]) -> str:
    lines = []
    tables = []
    for k, v in data.items():
        if v is None:
            continue
        if isinstance(v, dict) and k in ("trust", "mesh", "compute"):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        for k, v in table.items():
            if v is not None:
                lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"
