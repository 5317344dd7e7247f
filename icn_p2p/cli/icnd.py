"""``icnd``: create a node's directory, and run the node with its HTTP API.

``icnd init DIR`` writes a fresh Ed25519 key (``node.key``, mode 0600), an API
token (``api-token``, mode 0600) and a commented ``node.toml``. ``icnd run``
loads that config, starts the Node and the JSON-RPC/metrics server in one trio
nursery, logs ``key=value`` lines to stderr and stops cleanly on SIGINT or
SIGTERM.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from icn_p2p.api.defaults import DEFAULT_RPC_HOST, DEFAULT_RPC_PORT, TOKEN_FILE_NAME

log = logging.getLogger("icn_p2p.icnd")

EXIT_OK = 0
EXIT_ERROR = 1

KEY_FILE_NAME = "node.key"
CONFIG_FILE_NAME = "node.toml"
DEFAULT_P2P_PORT = 4001

app = typer.Typer(
    name="icnd",
    help="Run an icn-p2p node: a peer-to-peer compute node for cooperatives.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _err(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(_toml_str(v) for v in values) + "]"


def render_config(
    *,
    rpc_port: int,
    p2p_host: str,
    p2p_port: int,
    bootstrap: list[str],
    region: Optional[str],
    capabilities: dict[str, str],
    coops: list[str],
) -> str:
    """node.toml as text, each setting with a comment saying what it does."""
    caps = ", ".join(f"{_toml_str(k)} = {_toml_str(v)}" for k, v in sorted(capabilities.items()))
    region_line = f"region = {_toml_str(region)}" if region else '# region = "eu-central"'
    return f"""\
# icn-p2p node configuration, written by `icnd init`.
# Relative paths resolve against this file's directory. Any setting can be
# overridden by an environment variable ICN_<NAME> (nested: ICN_MESH__HEARTBEAT_S).

# The node's Ed25519 key (hex seed, mode 0600). Its DID and libp2p peer id derive from it.
key_file = "{KEY_FILE_NAME}"

# Where the node keeps its SQLite stores (policies, usage, tasks) and the API token
# file `{TOKEN_FILE_NAME}` that `icnctl --data-dir` reads.
data_dir = "."

# libp2p listen multiaddrs. Port 0 picks a free port at start.
listen = {_toml_list([f"/ip4/{p2p_host}/tcp/{p2p_port}"])}

# Peers to dial at start, each a full multiaddr ending in /p2p/<peer id>.
bootstrap = {_toml_list(bootstrap)}

# Region this node executes in; DataSovereignty rules match on it.
{region_line}

# Capabilities this node advertises to RequireCapability rules, name = version.
capabilities = {{{caps}}}

# What this node does: submit tasks, execute them, or both.
roles = ["executor", "submitter"]

# Cooperatives this node serves: it carries their policy and usage topics.
coops = {_toml_list(coops)}

# Governance: pin each domain's genesis id (refuse look-alike domains) and name the
# domain that governs each coop. Without them a coop is a development sandbox set by
# a node's own key.
# pinned_domains = {{ "healthcare:board" = "<genesis id, 64 hex>" }}
# coop_domains = {{ "healthcare-coop" = "healthcare:board" }}

# JSON-RPC and /metrics server. Keep the host on 127.0.0.1 unless a proxy guards it:
# reads are open, writes need the bearer token in `{TOKEN_FILE_NAME}`.
rpc_host = "{DEFAULT_RPC_HOST}"
rpc_port = {rpc_port}

# Trust in other executors, each in [0, 1]: executors below min_trust are never chosen.
[trust]
min_trust = 0.0
default_trust = 0.5
# peers = {{ "did:key:z6Mk..." = 0.9 }}

# Network tuning (defaults suit 3-100 nodes); uncomment to change.
# [mesh]
# max_connections = 64
# heartbeat_s = 0.5
# sync_interval_s = 3.0
# max_message_bytes = 262144
"""


def _parse_capabilities(values: list[str]) -> dict[str, str]:
    from icn_p2p.core.versions import parse_version

    caps: dict[str, str] = {}
    for item in values:
        name, sep, version = item.partition("=")
        name, version = name.strip(), version.strip()
        if not sep or not name or not version:
            raise typer.BadParameter(f"{item!r} is not name=version", param_hint="--capability")
        try:
            parse_version(version)
        except ValueError as e:
            raise typer.BadParameter(f"{item!r}: {e}", param_hint="--capability") from None
        caps[name] = version
    return caps


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@app.command("init")
def init(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Node directory to create.", show_default=False)],
    rpc_port: Annotated[int, typer.Option("--rpc-port", min=0, max=65535, help="JSON-RPC port.")] = DEFAULT_RPC_PORT,
    p2p_port: Annotated[int, typer.Option("--p2p-port", min=0, max=65535, help="libp2p TCP port.")] = DEFAULT_P2P_PORT,
    p2p_host: Annotated[str, typer.Option("--p2p-host", help="libp2p listen IPv4 address.")] = "127.0.0.1",
    bootstrap: Annotated[Optional[list[str]], typer.Option(
        "--bootstrap", help="Peer multiaddr ending in /p2p/<peer id> (repeatable).")] = None,
    region: Annotated[Optional[str], typer.Option("--region", help="Region this node executes in.")] = None,
    capability: Annotated[Optional[list[str]], typer.Option(
        "--capability", help="Advertised capability name=version (repeatable).")] = None,
    coop: Annotated[Optional[list[str]], typer.Option("--coop", help="Coop this node serves (repeatable).")] = None,
    join: Annotated[Optional[list[Path]], typer.Option(
        "--join", help="Directory of another node on this machine to bootstrap from (repeatable).")] = None,
) -> None:
    """Create DIR with a new key, an API token and a commented node.toml."""
    from icn_p2p.identity.keys import write_key_file

    bootstrap = list(bootstrap or [])
    for other in join or []:
        try:
            bootstrap.extend(node_addresses(other))
        except ValueError as e:
            _err(str(e))
            raise typer.Exit(EXIT_ERROR)
    caps = _parse_capabilities(capability or [])
    text = render_config(rpc_port=rpc_port, p2p_host=p2p_host, p2p_port=p2p_port, bootstrap=bootstrap,
                         region=region, capabilities=caps, coops=list(coop or []))
    problem = _check_config_text(text, directory)
    if problem:
        _err(problem)
        raise typer.Exit(EXIT_ERROR)
    existing = [n for n in (KEY_FILE_NAME, TOKEN_FILE_NAME, CONFIG_FILE_NAME) if (directory / n).exists()]
    if existing:
        _err(f"{directory} already holds {', '.join(existing)}; refusing to overwrite a node")
        raise typer.Exit(EXIT_ERROR)
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = write_key_file(directory / KEY_FILE_NAME)
        _write_secret(directory / TOKEN_FILE_NAME, secrets.token_urlsafe(32) + "\n")
        (directory / CONFIG_FILE_NAME).write_text(text)
    except OSError as e:
        _err(f"cannot create node in {directory}: {e.strerror or e}")
        raise typer.Exit(EXIT_ERROR)
    from libp2p.peer.id import ID

    peer_id = ID.from_pubkey(key.libp2p_key_pair().public_key).to_base58()
    print(f"node created in {directory}")
    print(f"  did: {key.did}")
    print(f"  peer id: {peer_id}")
    if p2p_port:
        print(f"  address: /ip4/{p2p_host}/tcp/{p2p_port}/p2p/{peer_id}")
    print(f"  config: {directory / CONFIG_FILE_NAME}")
    print(f"next: icnd run --config {directory / CONFIG_FILE_NAME}")


def node_addresses(directory: Path) -> list[str]:
    """Dialable addresses of the node initialised in ``directory`` (from its config and key)."""
    from libp2p.peer.id import ID

    from icn_p2p.identity.keys import IdentityError, load_key_file
    from icn_p2p.node.config import ConfigError, NodeConfig

    try:
        config = NodeConfig.from_toml(directory / CONFIG_FILE_NAME)
        key = load_key_file(config.key_file)
    except (ConfigError, IdentityError) as e:
        raise ValueError(f"--join {directory}: {e}") from None
    peer_id = ID.from_pubkey(key.libp2p_key_pair().public_key).to_base58()
    out = []
    for addr in config.listen:
        if addr.endswith("/tcp/0"):
            continue  # a port chosen at start cannot be known in advance
        out.append(addr.replace("/ip4/0.0.0.0/", "/ip4/127.0.0.1/") + f"/p2p/{peer_id}")
    if not out:
        raise ValueError(f"--join {directory}: that node listens on a port chosen at start; "
                         "use --bootstrap with the address `icnctl node info` shows")
    return out


def _check_config_text(text: str, directory: Path) -> Optional[str]:
    """Validate the rendered config as ``run`` will load it; a message when it would be refused."""
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:  # pragma: no cover - we render it
        return f"generated config is not TOML: {e}"
    try:
        from icn_p2p.node.config import ConfigError, NodeConfig
    except ImportError:  # pragma: no cover - the node package always has it once installed
        return None
    data["key_file"] = str(directory / KEY_FILE_NAME)
    data["data_dir"] = str(directory)
    try:
        NodeConfig.from_mapping(data, source="options")
    except ConfigError as e:
        return str(e)
    return None


# --- run --------------------------------------------------------------------------------


class _KeyValueFormatter(logging.Formatter):
    """``ts=... level=... logger=... <message>``; messages already say key=value."""

    def format(self, record: logging.LogRecord) -> str:
        line = (f"ts={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} level={record.levelname.lower()} "
                f"logger={record.name} {record.getMessage()}")
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info))
        return line


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def read_token(data_dir: Path) -> str:
    path = Path(data_dir) / TOKEN_FILE_NAME
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        raise RuntimeError(f"API token file {path} does not exist (icnd init creates it)") from None
    if not token:
        raise RuntimeError(f"API token file {path} is empty")
    if path.stat().st_mode & 0o077:
        raise RuntimeError(f"API token file {path} is readable by group or others; run: chmod 600 {path}")
    return token


async def _stop_on_signals(cancel_scope: Any) -> None:
    import trio

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("event=signal signal=%s action=stop", signal.Signals(signum).name)
            cancel_scope.cancel()
            return


async def run_node(config: Any, token: str) -> None:
    """Run the Node and the HTTP server in one nursery until cancelled."""
    import trio

    from icn_p2p.api.http import ApiApp, serve
    from icn_p2p.api.jsonrpc import Dispatcher
    from icn_p2p.api.node_service import NodeBackedService
    from icn_p2p.node.node import Node

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signals, nursery.cancel_scope)
        node = Node(config)
        await nursery.start(node.run)
        service = NodeBackedService(node)
        app_ = ApiApp(Dispatcher(service, token=token))
        bound = await nursery.start(serve, app_, config.rpc_host, config.rpc_port)
        info = await service.node_info(None)
        log.info("event=node_ready did=%s peer_id=%s rpc=%s listen=%s", info.did, info.peer_id, bound.url,
                 ",".join(info.listen_addrs))


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups from trio nurseries."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


@app.command("run")
def run(
    config_path: Annotated[Path, typer.Option("--config", help="The node's config file.")] = Path(CONFIG_FILE_NAME),
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the node and its JSON-RPC/metrics server until SIGINT or SIGTERM."""
    import trio

    from icn_p2p.node.config import ConfigError, NodeConfig

    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise typer.BadParameter(f"{log_level!r} is not a log level", param_hint="--log-level")
    try:
        config = NodeConfig.from_toml(config_path)
    except ConfigError as e:
        _err(str(e))
        raise typer.Exit(EXIT_ERROR)
    try:
        token = read_token(config.data_dir)
    except RuntimeError as e:
        _err(str(e))
        raise typer.Exit(EXIT_ERROR)
    setup_logging(log_level)
    log.info("event=starting config=%s", config_path)
    try:
        trio.run(run_node, config, token)
    except KeyboardInterrupt:  # pragma: no cover - the signal receiver normally wins
        pass
    except Exception as e:
        leaf = _leaf(e)
        if isinstance(leaf, OSError):  # a port in use, a directory we cannot write: say which
            log.error("event=start_failed error=%r", str(leaf))
            _err(f"cannot start: {leaf.strerror or leaf} (rpc {config.rpc_host}:{config.rpc_port}, "
                 f"listen {', '.join(config.listen)})")
        else:  # logged with its traceback as one key=value line, then exit 1
            log.exception("event=crashed error=%r", str(leaf))
            _err(f"node stopped: {type(leaf).__name__}: {leaf}")
        raise typer.Exit(EXIT_ERROR)
    log.info("event=stopped")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="icnd")


if __name__ == "__main__":  # pragma: no cover
    main()
