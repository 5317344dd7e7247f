"""``icnctl`` commands that talk to a running node over JSON-RPC.

``register(app)`` attaches them to the root app: ``policy set/show/list/
remove/history``, ``quota show/list``, ``compute submit/status/cancel/list/
explain``, ``mesh peers/watch`` and ``node info``. Every read takes ``--json``
(one JSON document on stdout, full DIDs); tables shorten long DIDs and
right-align numbers.

Errors are one line on stderr (or a JSON ``{"error": ...}`` with ``--json``),
never a traceback. Exit codes: 0 ok, 1 error, 2 usage, 3 rejected by policy.
"""

from __future__ import annotations

import base64
import json
import os
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Iterator, NoReturn, Optional

import typer

from icn_p2p.api.defaults import DEFAULT_NODE_URL, TOKEN_FILE_NAME
from icn_p2p.api.schemas import TERMINAL_TASK_STATES
from icn_p2p.cli.client import ClientError, NodeUnreachable, RpcCallError, RpcClient
from icn_p2p.cli.output import BadInput, emit_json, issues_from_validation, load_json_file

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3


JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document (full DIDs).")]
CoopOpt = Annotated[str, typer.Option("--coop-id", help="Cooperative id.", show_default=False)]


# --- plumbing ------------------------------------------------------------------------


def short(value: Optional[str], width: int = 28) -> str:
    """A long DID or peer id shortened for a table cell: head…tail. Never used for --json."""
    if value is None:
        return "-"
    if len(value) <= width:
        return value
    tail = 8
    return value[: width - tail - 1] + "…" + value[-tail:]


def when(ms: Optional[int]) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _root_option(ctx: typer.Context, name: str) -> Any:
    obj = ctx.find_root().obj
    return getattr(obj, name, None)


def resolve_token(token: Optional[str], data_dir: Optional[Path]) -> Optional[str]:
    """--token / ICN_TOKEN wins; else DATA_DIR/api-token when it exists."""
    if token:
        return token
    if data_dir is not None:
        path = Path(data_dir) / TOKEN_FILE_NAME
        try:
            return path.read_text().strip() or None
        except OSError:
            return None
    return None


def make_client(ctx: typer.Context) -> RpcClient:
    node = _root_option(ctx, "node") or os.environ.get("ICN_NODE") or DEFAULT_NODE_URL
    token = resolve_token(
        _root_option(ctx, "token") or os.environ.get("ICN_TOKEN"),
        _root_option(ctx, "data_dir") or (Path(os.environ["ICN_DATA_DIR"]) if os.environ.get("ICN_DATA_DIR") else None),
    )
    return RpcClient(node, token)


def fail(message: str, *, as_json: bool, code: int = EXIT_ERROR, extra: Optional[dict[str, Any]] = None) -> NoReturn:
    if as_json:
        emit_json({"error": {"message": message, **(extra or {})}})
    else:
        err_console().print(f"error: {message}", markup=False, highlight=False)
    raise typer.Exit(code)


def _print_violations(data: dict[str, Any]) -> None:
    decision = data.get("decision") or {}
    out = err_console()
    for v in decision.get("violations", []):
        line = f"  - {v.get('rule')}: {v.get('reason')}"
        if v.get("remedy"):
            line += f" (to pass: {v['remedy']})"
        out.print(line, markup=False, highlight=False)


@contextmanager
def rpc_errors(as_json: bool) -> Iterator[None]:
    """Turn client failures into one line (or one JSON object) and the right exit code."""
    try:
        yield
    except NodeUnreachable as e:
        fail(str(e), as_json=as_json, extra={"reason": "unreachable"})
    except RpcCallError as e:
        extra = {"code": e.code, "reason": e.reason, "data": e.data}
        if e.reason == "policy_rejected":
            if not as_json:
                err_console().print(f"rejected: {e.message}", markup=False, highlight=False)
                _print_violations(e.data)
                raise typer.Exit(EXIT_REJECTED)
            fail(e.message, as_json=True, code=EXIT_REJECTED, extra=extra)
        message = str(e)
        if e.reason == "unauthorized":
            message += " (pass --token, set ICN_TOKEN, or --data-dir DIR holding api-token)"
        fail(message, as_json=as_json, extra=extra)
    except ClientError as e:
        fail(str(e), as_json=as_json)


def call(ctx: typer.Context, as_json: bool, method: str, **params: Any) -> Any:
    with rpc_errors(as_json):
        with make_client(ctx) as client:
            return client.call(method, **params)


def _table(title: Optional[str], columns: list[tuple[str, str]]):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name, kind in columns:
        if kind == "num":
            table.add_column(name, justify="right", no_wrap=True)
        elif kind == "id":
            table.add_column(name, no_wrap=True)
        else:
            table.add_column(name)
    return table


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def console(*, stderr: bool = False):
    """A rich console on the current stdout/stderr (resolved at call time, so tests capture it).

    Emoji codes stay off: ``did:key:z6Mk…`` must not print a key symbol.
    """
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True, highlight=False, emoji=False)


def err_console():
    return console(stderr=True)


def table_console():
    """Where tables go: the terminal's width, or wide enough for whole rows when piped."""
    from rich.console import Console

    out = console()
    if out.is_terminal:
        return out
    return Console(soft_wrap=True, highlight=False, emoji=False, width=200)


def _print(text: str) -> None:
    console().print(text, markup=False, highlight=False)


# --- policy --------------------------------------------------------------------------


def _load_policy(path: Path, as_json: bool) -> Any:
    from pydantic import ValidationError

    from icn_p2p.core.policy import CoopSchedulingPolicy

    try:
        data = load_json_file(path, "policy file")
        try:
            return CoopSchedulingPolicy.model_validate(data)
        except ValidationError as e:
            raise BadInput(str(path), issues_from_validation(e)) from None
    except BadInput as e:
        if as_json:
            emit_json({"error": {"message": "invalid policy file", "errors": [i.as_dict() for i in e.issues]}})
        else:
            for line in e.lines():
                err_console().print(line, markup=False, highlight=False)
        raise typer.Exit(EXIT_ERROR)


def policy_set(
    ctx: typer.Context,
    policy_file: Annotated[Optional[Path], typer.Option(
        "--policy", help="Policy file (ICN JSON format) for a coop without a governance domain.")] = None,
    act_file: Annotated[Optional[Path], typer.Option(
        "--act", help="Signed policy act (JSON) for a governed coop.")] = None,
    coop_id: Annotated[Optional[str], typer.Option("--coop-id", help="Must match the file's coop_id.")] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the history).")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Set a coop's policy on the node from a JSON file (validated before sending)."""
    if (policy_file is None) == (act_file is None):
        raise typer.BadParameter("give exactly one of --policy FILE or --act FILE", param_hint="--policy")
    params: dict[str, Any] = {"coop_id": coop_id, "reason": reason or None}
    if policy_file is not None:
        policy = _load_policy(policy_file, as_json)
        if coop_id is not None and coop_id != policy.coop_id:
            fail(f"--coop-id {coop_id} does not match the file's coop_id {policy.coop_id}", as_json=as_json)
        params["policy"] = policy.to_icn_dict()
    else:
        try:
            act = load_json_file(act_file, "act file")
        except BadInput as e:
            fail("; ".join(e.lines()), as_json=as_json)
        if not isinstance(act, dict):
            fail(f"{act_file}: a signed act is a JSON object", as_json=as_json)
        params["act"] = act
    result = call(ctx, as_json, "policy.set", **params)
    if as_json:
        emit_json(result)
        return
    if result.get("status") == "pending":
        _print(f"proposal for {result['coop_id']} version {result['version']} stored, waiting for approvals")
    elif result.get("changed", True):
        _print(f"policy for {result['coop_id']} set: version {result['version']} ({result['content_hash'][:12]})")
    else:
        _print(f"policy for {result['coop_id']} unchanged: already version {result['version']}")
    _print(f"next: icnctl policy show --coop-id {result['coop_id']}")


def policy_show(
    ctx: typer.Context,
    coop_id: CoopOpt,
    version: Annotated[Optional[int], typer.Option("--version", min=1, help="A past version.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a coop's policy (pretty JSON) with its version and who set it."""
    record = call(ctx, as_json, "policy.get", coop_id=coop_id, version=version)
    if as_json:
        emit_json(record)
        return
    governed = "governed" if record.get("governed") else "set by node key (no governance domain)"
    _print(f"coop {record['coop_id']}  version {record['version']}  {record['content_hash'][:12]}")
    _print(f"set by {record.get('set_by') or '-'} at {when(record.get('set_at_ms'))} ({governed})")
    _print(json.dumps(record["policy"], indent=2))


def policy_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the coops this node holds a policy for."""
    result = call(ctx, as_json, "policy.list")
    if as_json:
        emit_json(result)
        return
    policies = result["policies"]
    if not policies:
        _print("no policies (set one with: icnctl policy set --policy FILE)")
        return
    table = _table(f"{len(policies)} policies", [
        ("coop", "id"), ("version", "num"), ("mode", "text"), ("governance", "text"),
        ("rules", "num"), ("member quotas", "num"), ("hash", "id"),
    ])
    for p in policies:
        table.add_row(p["coop_id"], str(p["version"]), p["enforcement_mode"], p.get("governance_domain") or "-",
                      str(p["rules"]), str(p["member_quotas"]), p["content_hash"][:12])
    table_console().print(table)


def policy_remove(ctx: typer.Context, coop_id: CoopOpt, as_json: JsonOpt = False) -> None:
    """Remove a coop's policy from the node."""
    result = call(ctx, as_json, "policy.remove", coop_id=coop_id)
    if as_json:
        emit_json(result)
        return
    if result["removed"]:
        _print(f"policy for {coop_id} removed")
    else:
        fail(f"no policy for {coop_id} to remove", as_json=False)


def policy_history(
    ctx: typer.Context,
    coop_id: CoopOpt,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="Most recent N versions.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Every version of a coop's policy, who set it and when."""
    result = call(ctx, as_json, "policy.history", coop_id=coop_id, limit=limit)
    if as_json:
        emit_json(result)
        return
    table = _table(f"policy history of {coop_id}", [
        ("version", "num"), ("set at (UTC)", "id"), ("set by", "id"), ("governed", "text"),
        ("approvers", "num"), ("status", "text"), ("reason", "text"), ("changes", "text"), ("hash", "id"),
    ])
    for v in result["versions"]:
        table.add_row(str(v["version"]), when(v.get("set_at_ms")), short(v.get("set_by")),
                      "yes" if v.get("governed") else "no", str(v.get("approvers", 0)), v.get("status", "active"),
                      v.get("reason") or "", v.get("changes") or "", v["content_hash"][:12])
    table_console().print(table)
    approvers = [(v["version"], v.get("approver_dids") or []) for v in result["versions"] if v.get("approver_dids")]
    for version, dids in approvers:
        _print(f"version {version} approved by: {', '.join(dids)}")


# --- quota ---------------------------------------------------------------------------


def _quota_rows(entry: dict[str, Any]) -> list[tuple[str, str, str]]:
    usage, quota = entry["usage"], entry.get("quota") or {}
    credits = quota.get("credits_per_month")
    return [
        ("CPU hours", _num(usage["cpu_hours_this_month"]), _num(quota.get("cpu_hours_per_month"))),
        ("concurrent tasks", str(usage["concurrent_tasks"]), _num(quota.get("max_concurrent_tasks"))),
        ("tasks completed", str(usage["tasks_completed_this_month"]), "-"),
        ("credits spent", str(usage["credits_spent_this_month"]),
         "unlimited" if quota and credits is None else _num(credits)),
        ("fuel", str(usage["fuel_this_month"]), "-"),
    ]


def quota_show(
    ctx: typer.Context,
    coop_id: CoopOpt,
    member: Annotated[str, typer.Option("--member", help="Member DID.", show_default=False)],
    month: Annotated[Optional[str], typer.Option("--month", help="YYYY-MM (UTC); default this month.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """One member's merged usage this month against their quota."""
    result = call(ctx, as_json, "quota.usage", coop_id=coop_id, member=member, month=month)
    if as_json:
        emit_json(result)
        return
    usage, quota = result["usage"], result.get("quota")
    _print(f"member {usage['member']} in {usage['coop_id']}, {usage['month']}")
    if quota:
        _print(f"max priority {quota['max_priority']}")
    else:
        _print("no policy for this coop: no quota applies")
    table = _table(None, [("counter", "text"), ("used", "num"), ("limit", "num")])
    for row in _quota_rows(result):
        table.add_row(*row)
    table_console().print(table)


def quota_list(
    ctx: typer.Context,
    coop_id: CoopOpt,
    month: Annotated[Optional[str], typer.Option("--month", help="YYYY-MM (UTC); default this month.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every member of a coop with usage this month."""
    result = call(ctx, as_json, "quota.list", coop_id=coop_id, month=month)
    if as_json:
        emit_json(result)
        return
    members = result["members"]
    if not members:
        _print(f"no usage recorded for {coop_id} in {result['month']}")
        return
    table = _table(f"usage in {coop_id}, {result['month']}", [
        ("member", "id"), ("CPU h", "num"), ("CPU h limit", "num"), ("running", "num"), ("max", "num"),
        ("completed", "num"), ("credits", "num"), ("credit limit", "num"),
    ])
    for entry in members:
        u, q = entry["usage"], entry.get("quota") or {}
        credits = q.get("credits_per_month")
        table.add_row(
            short(u["member"]), _num(u["cpu_hours_this_month"]), _num(q.get("cpu_hours_per_month")),
            str(u["concurrent_tasks"]), _num(q.get("max_concurrent_tasks")), str(u["tasks_completed_this_month"]),
            str(u["credits_spent_this_month"]), "unlimited" if q and credits is None else _num(credits),
        )
    table_console().print(table)


# --- compute -------------------------------------------------------------------------


def _parse_arg(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number", param_hint="--arg") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise typer.BadParameter(f"{text!r} is not a finite number", param_hint="--arg")
    return value


def _status_line(task: dict[str, Any]) -> str:
    parts = [f"task {task['task_id']}: {task['state']}"]
    if task.get("executor"):
        parts.append(f"on {short(task['executor'])}")
    if task.get("fuel_used") is not None:
        parts.append(f"fuel {task['fuel_used']}")
    if task.get("cpu_ms") is not None:
        parts.append(f"cpu {task['cpu_ms']} ms")
    if task.get("result") is not None:
        parts.append(f"result {json.dumps(task['result'])}")
    if task.get("error"):
        parts.append(f"error: {task['error']}")
    return ", ".join(parts)


def _wait(ctx: typer.Context, as_json: bool, task_id: str, timeout: float, interval: float) -> dict[str, Any]:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    deadline = time.monotonic() + timeout
    with rpc_errors(as_json), make_client(ctx) as client:
        progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
            console=err_console(), transient=True, disable=as_json,
        )
        with progress:
            bar = progress.add_task(f"task {task_id}: submitted", total=None)
            while True:
                task = client.call("compute.status", task_id=task_id)
                progress.update(bar, description=f"task {task_id}: {task['state']}")
                if task["state"] in TERMINAL_TASK_STATES:
                    return task
                if time.monotonic() >= deadline:
                    fail(f"task {task_id} still {task['state']} after {timeout:g} s", as_json=as_json,
                         extra={"task": task})
                time.sleep(interval)


def _exit_for(task: dict[str, Any]) -> int:
    state = task["state"]
    if state == "completed":
        return EXIT_OK
    if state == "rejected":
        return EXIT_REJECTED
    return EXIT_ERROR


def compute_submit(
    ctx: typer.Context,
    coop_id: CoopOpt,
    wasm: Annotated[Path, typer.Option("--wasm", help="WebAssembly module (.wasm binary or .wat text).",
                                       show_default=False)],
    entry: Annotated[str, typer.Option("--entry", help="Exported function to call.")] = "main",
    args: Annotated[Optional[list[str]], typer.Option("--arg", help="Argument (number); repeat in order.")] = None,
    fuel: Annotated[int, typer.Option("--fuel", min=1, help="Fuel limit.")] = 10_000_000,
    priority: Annotated[str, typer.Option("--priority", help="Low, Normal, High or Critical.")] = "Normal",
    tags: Annotated[Optional[list[str]], typer.Option("--tag", help="Task tag (repeatable).")] = None,
    submitter: Annotated[Optional[str], typer.Option("--submitter", help="Member DID (default: the node's).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result, showing progress.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=0.0, help="Seconds to wait with --wait.")] = 300.0,
    interval: Annotated[float, typer.Option("--poll", min=0.01, help="Seconds between polls with --wait.",
                                            hidden=True)] = 0.25,
    as_json: JsonOpt = False,
) -> None:
    """Submit a WebAssembly task; exit 3 if the coop's policy rejects it."""
    from icn_p2p.core.enums import TaskPriority

    names = {p.value.lower(): p.value for p in TaskPriority}
    if priority.lower() not in names:
        raise typer.BadParameter(f"{priority!r} is not one of {', '.join(names.values())}", param_hint="--priority")
    values = [_parse_arg(a) for a in args or []]
    try:
        module = wasm.read_bytes()
    except OSError as e:
        fail(f"{wasm}: cannot be read: {e.strerror or e}", as_json=as_json)
    from icn_p2p.core.task import looks_like_module

    if not looks_like_module(module):
        fail(f"{wasm}: neither a WebAssembly binary nor WAT text", as_json=as_json)
    result = call(
        ctx, as_json, "compute.submit", coop_id=coop_id, module=base64.b64encode(module).decode(),
        entry=entry, args=values, fuel_limit=fuel, priority=names[priority.lower()], tags=tags or [],
        submitter=submitter,
    )
    if result["state"] == "rejected":
        if as_json:
            emit_json(result)
        else:
            _print(f"task {result['task_id']} rejected by policy: {result.get('reason')}")
        raise typer.Exit(EXIT_REJECTED)
    if not wait:
        if as_json:
            emit_json(result)
        else:
            _print(f"task {result['task_id']} submitted: {result['state']}")
            _print(f"next: icnctl compute status {result['task_id']}")
        return
    task = _wait(ctx, as_json, result["task_id"], timeout, interval)
    if as_json:
        emit_json({"submitted": result, "task": task})
    else:
        _print(_status_line(task))
    raise typer.Exit(_exit_for(task))


def compute_status(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help="Task id.", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """A task's state, executor and result."""
    task = call(ctx, as_json, "compute.status", task_id=task_id)
    if as_json:
        emit_json(task)
        return
    _print(_status_line(task))


def compute_cancel(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help="Task id.", show_default=False)],
    reason: Annotated[Optional[str], typer.Option("--reason", help="Why (recorded).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel a task that has not finished."""
    result = call(ctx, as_json, "compute.cancel", task_id=task_id, reason=reason)
    if as_json:
        emit_json(result)
        return
    if result["cancelled"]:
        _print(f"task {task_id} cancelled")
    else:
        fail(f"task {task_id} is already {result['state']}", as_json=False)


def compute_list(
    ctx: typer.Context,
    coop_id: Annotated[Optional[str], typer.Option("--coop-id", help="Only this coop.")] = None,
    state: Annotated[Optional[str], typer.Option("--state", help="Only tasks in this state.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Tasks this node knows of."""
    result = call(ctx, as_json, "compute.list", coop_id=coop_id, state=state, limit=limit)
    if as_json:
        emit_json(result)
        return
    tasks = result["tasks"]
    if not tasks:
        _print("no tasks")
        return
    table = _table(f"{len(tasks)} tasks", [
        ("task", "id"), ("coop", "id"), ("submitter", "id"), ("priority", "text"), ("state", "text"),
        ("executor", "id"), ("fuel", "num"), ("updated (UTC)", "id"),
    ])
    for t in tasks:
        table.add_row(t["task_id"], t["coop_id"], short(t["submitter"]), t["priority"], t["state"],
                      short(t.get("executor")), _num(t.get("fuel_used")), when(t.get("updated_at_ms")))
    table_console().print(table)


def compute_explain(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help="Task id.", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """Why a task was admitted or rejected, and why each executor won or lost."""
    result = call(ctx, as_json, "compute.explain", task_id=task_id)
    if as_json:
        emit_json(result)
        return
    _print(f"task {result['task_id']}: {result['state']}")
    decision = result.get("decision")
    if decision:
        _print(f"admission: {decision['decision']} (priority {decision['submitted_priority']} -> "
               f"{decision['adjusted_priority']}, {decision['enforcement_mode']})")
        for v in decision.get("violations", []):
            _print(f"  - {v['rule']}: {v['reason']}" + (f" (to pass: {v['remedy']})" if v.get("remedy") else ""))
    offers = result.get("offers") or []
    if offers:
        keys: list[str] = []
        for o in offers:
            keys.extend(k for k in o.get("breakdown", {}) if k not in keys)
        table = _table("offers", [("executor", "id"), ("feasible", "text"), ("score", "num")]
                       + [(k, "num") for k in keys] + [("why not", "text")])
        for o in offers:
            mark = " *" if o["executor"] == result.get("chosen") else ""
            table.add_row(short(o["executor"]) + mark, "yes" if o["feasible"] else "no",
                          _num(o.get("score"), 3), *(_num(o["breakdown"].get(k), 3) for k in keys),
                          "; ".join(o.get("reasons", [])))
        table_console().print(table)
    else:
        _print("no offers")


# --- mesh and node -------------------------------------------------------------------


def mesh_peers(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Connected peers with their RTT, coops and policy versions."""
    result = call(ctx, as_json, "mesh.peers")
    if as_json:
        emit_json(result)
        return
    peers = result["peers"]
    if not peers:
        _print("no peers connected")
        return
    table = _table(f"{len(peers)} peers", [
        ("peer", "id"), ("did", "id"), ("rtt ms", "num"), ("coops", "text"), ("address", "text"),
    ])
    for p in peers:
        table.add_row(short(p["peer_id"]), short(p.get("did")), _num(p.get("rtt_ms")),
                      ", ".join(p.get("coops", [])) or "-", (p.get("addrs") or ["-"])[0])
    table_console().print(table)


def _snapshot(client: RpcClient) -> dict[str, Any]:
    info = client.call("node.info")
    peers = client.call("mesh.peers")["peers"]
    return {
        "at_ms": int(time.time() * 1000),
        "node": {"did": info["did"], "peer_id": info["peer_id"], "policy_versions": info.get("policy_versions", {})},
        "peers": [{"peer_id": p["peer_id"], "did": p.get("did"), "policy_versions": p.get("policy_versions", {})}
                  for p in peers],
    }


def _watch_table(snap: dict[str, Any]):
    from rich.table import Table

    local = snap["node"]["policy_versions"]
    coops = sorted(set(local).union(*(p["policy_versions"] for p in snap["peers"])))
    table = Table(title=f"policy versions per peer at {when(snap['at_ms'])}", title_justify="left")
    table.add_column("coop", no_wrap=True)
    table.add_column("this node", justify="right", no_wrap=True)
    for p in snap["peers"]:
        table.add_column(short(p["peer_id"], 16), justify="right", no_wrap=True)
    for coop in coops:
        mine = local.get(coop)
        cells = [str(mine) if mine is not None else "-"]
        for p in snap["peers"]:
            v = p["policy_versions"].get(coop)
            if v is None:
                cells.append("-")
            elif mine is None or v != mine:
                cells.append(f"[yellow]{v}[/yellow]")
            else:
                cells.append(f"[green]{v}[/green]")
        table.add_row(coop, *cells)
    if not coops:
        table.caption = "no policies on this node or its peers"
    return table


def mesh_watch(
    ctx: typer.Context,
    interval: Annotated[float, typer.Option("--interval", min=0.01, help="Seconds between refreshes.")] = 1.0,
    count: Annotated[Optional[int], typer.Option("--count", min=1, help="Stop after N refreshes.")] = None,
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document per refresh (JSON lines).")] = False,
) -> None:
    """Live view of each coop's policy version on this node and its peers (Ctrl-C stops)."""
    from rich.live import Live

    limit = 1 if once else count
    done = 0
    with rpc_errors(as_json), make_client(ctx) as client:
        try:
            if as_json or once:
                while limit is None or done < limit:
                    snap = _snapshot(client)
                    if as_json:
                        print(json.dumps(snap), flush=True)
                    else:
                        table_console().print(_watch_table(snap))
                    done += 1
                    if limit is None or done < limit:
                        time.sleep(interval)
                return
            with Live(console=table_console(), auto_refresh=False) as live:
                while limit is None or done < limit:
                    live.update(_watch_table(_snapshot(client)), refresh=True)
                    done += 1
                    if limit is None or done < limit:
                        time.sleep(interval)
        except KeyboardInterrupt:
            return


def _coop_version(coop: str, versions: dict[str, int]) -> str:
    return f"{coop} (v{versions[coop]})" if coop in versions else f"{coop} (no policy)"


def node_info(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The node's DID, peer id, listen addresses, coops and capabilities."""
    info = call(ctx, as_json, "node.info")
    if as_json:
        emit_json(info)
        return
    rows = [
        ("did", info["did"]), ("peer id", info["peer_id"]), ("version", info["version"]),
        ("region", info.get("region") or "-"),
        ("coops", ", ".join(_coop_version(c, info.get("policy_versions", {})) for c in info.get("coops", []))
         or "-"),
        ("capabilities", ", ".join(f"{k}={v}" for k, v in sorted(info.get("capabilities", {}).items())) or "-"),
        ("peers", str(info.get("peers", 0))), ("uptime", f"{info.get('uptime_s', 0):.0f} s"),
    ]
    for label, value in rows:
        _print(f"{label:>12}: {value}")
    for addr in info.get("listen_addrs", []):
        _print(f"{'listening':>12}: {addr}")


# --- registration --------------------------------------------------------------------


def _group(app: typer.Typer, name: str, help_text: str) -> typer.Typer:
    for info in app.registered_groups:
        if info.name == name and info.typer_instance is not None:
            return info.typer_instance
    sub = typer.Typer(help=help_text, no_args_is_help=True)
    app.add_typer(sub, name=name)
    return sub


def register(app: typer.Typer) -> None:
    """Attach the online commands to ``app`` (idempotent)."""
    if getattr(app, "_icn_online_registered", False):
        return
    app._icn_online_registered = True  # type: ignore[attr-defined]
    policy = _group(app, "policy", "Cooperative scheduling policies.")
    policy.command("set")(policy_set)
    policy.command("show")(policy_show)
    policy.command("list")(policy_list)
    policy.command("remove")(policy_remove)
    policy.command("history")(policy_history)
    quota = _group(app, "quota", "Members' usage against their quotas (from a running node).")
    quota.command("show")(quota_show)
    quota.command("list")(quota_list)
    compute = _group(app, "compute", "Submit and follow WebAssembly tasks.")
    compute.command("submit")(compute_submit)
    compute.command("status")(compute_status)
    compute.command("cancel")(compute_cancel)
    compute.command("list")(compute_list)
    compute.command("explain")(compute_explain)
    mesh = _group(app, "mesh", "The peers this node sees.")
    mesh.command("peers")(mesh_peers)
    mesh.command("watch")(mesh_watch)
    node = _group(app, "node", "This node.")
    node.command("info")(node_info)
    from .governance_cmds import register as register_governance

    register_governance(app)
