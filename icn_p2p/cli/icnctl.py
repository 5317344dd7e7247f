"""``icnctl``: the command-line face of a node, and offline policy tools.

One root app with a sub-app per noun (``policy`` now; ``quota``, ``compute``,
``mesh``, ``node`` join it). The root callback takes the options every online
command shares (``--node``, ``--token``, ``--data-dir``) and leaves them in
``ctx.obj`` as a ``CliState``; offline commands ignore them.

Exit codes: 0 success (a task admitted), 1 bad input (a file that cannot be
used; the path of each bad field and why is printed), 2 usage error, 3 a task
the policy rejects.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from icn_p2p.cli.output import (
    BadInput,
    Issue,
    console,
    emit_json,
    err_console,
    issues_from_validation,
    load_json_file,
)

if TYPE_CHECKING:  # pragma: no cover
    from icn_p2p.core.decision import PolicyDecision
    from icn_p2p.core.policy import CoopSchedulingPolicy
    from icn_p2p.core.task import ComputeTask
    from icn_p2p.core.usage import MemberUsage

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3

app = typer.Typer(
    name="icnctl",
    help="Control an icn-p2p node and work with cooperative scheduling policies.",
    no_args_is_help=True,
    add_completion=False,
)
policy_app = typer.Typer(
    help="Cooperative scheduling policies: validate and try them offline.",
    no_args_is_help=True,
)
app.add_typer(policy_app, name="policy")


@dataclass(frozen=True)
class CliState:
    """Options shared by every command; online commands talk to ``node`` with ``token``."""

    node: Optional[str] = None
    token: Optional[str] = None
    data_dir: Optional[Path] = None


def state(ctx: typer.Context) -> CliState:
    """The shared options, also when a command runs without the root callback (tests)."""
    root = ctx.find_root()
    return root.obj if isinstance(root.obj, CliState) else CliState()


@app.callback()
def _root(
    ctx: typer.Context,
    node: Annotated[
        Optional[str],
        typer.Option("--node", envvar="ICN_NODE", help="URL of the node's JSON-RPC API (online commands)."),
    ] = None,
    token: Annotated[
        Optional[str],
        typer.Option("--token", envvar="ICN_TOKEN", help="API token for the node (online commands).",
                     show_default=False),
    ] = None,
    data_dir: Annotated[
        Optional[Path],
        typer.Option("--data-dir", envvar="ICN_DATA_DIR", help="Node data directory (its api-token is read for mutating commands)."),
    ] = None,
) -> None:
    ctx.obj = CliState(node=node, token=token, data_dir=data_dir)


# --- loading input files --------------------------------------------------------------


def load_policy_file(path: Path) -> "CoopSchedulingPolicy":
    """A policy from an ICN-format JSON file, or ``BadInput`` listing every bad field."""
    from pydantic import ValidationError

    from icn_p2p.core.policy import CoopSchedulingPolicy

    data = load_json_file(path, "policy file")
    try:
        return CoopSchedulingPolicy.model_validate(data)
    except ValidationError as e:
        raise BadInput(str(path), issues_from_validation(e)) from None
    except RecursionError:  # pragma: no cover - absurdly nested input
        raise BadInput(str(path), [Issue("$", "nested too deeply")]) from None


def load_task_file(path: Path) -> "ComputeTask":
    from pydantic import ValidationError

    from icn_p2p.core.task import ComputeTask

    data = load_json_file(path, "task file")
    try:
        return ComputeTask.model_validate(data)
    except ValidationError as e:
        raise BadInput(str(path), issues_from_validation(e)) from None


def load_usage_file(path: Optional[Path]) -> "MemberUsage":
    """Usage figures (every one optional, default 0), validated strictly: ``"5"`` is not 5."""
    from pydantic import ValidationError

    from icn_p2p.core.usage import MemberUsage

    if path is None:
        return MemberUsage()
    data = load_json_file(path, "usage file")
    try:
        return MemberUsage.model_validate(data, strict=True)
    except ValidationError as e:
        raise BadInput(str(path), issues_from_validation(e)) from None


def _parse_at(value: Optional[str]) -> Optional[int]:
    """``--at`` as UTC milliseconds; a time without a zone is UTC."""
    if value is None:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO 8601 time (e.g. 2026-11-22T23:00:00Z)", param_hint="--at"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def _print_bad(errors: list[str], *, to_stderr: bool = True) -> None:
    out = err_console() if to_stderr else console()
    for line in errors:
        out.print(line, markup=False)


# --- policy validate -------------------------------------------------------------------


@policy_app.command("validate")
def policy_validate(
    files: Annotated[list[Path], typer.Argument(help="Policy files (ICN JSON format).", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Check policy files; print the JSON path of every bad field and why."""
    results: list[dict[str, Any]] = []
    for path in files:
        try:
            policy = load_policy_file(path)
        except BadInput as e:
            results.append({"file": str(path), "valid": False,
                            "errors": [i.as_dict() for i in e.issues], "lines": e.lines()})
        else:
            results.append({"file": str(path), "valid": True, "coop_id": policy.coop_id,
                            "content_hash": policy.content_hash(), "errors": []})
    ok = all(r["valid"] for r in results)
    if as_json:
        emit_json({"valid": ok, "files": [{k: v for k, v in r.items() if k != "lines"} for r in results]})
    else:
        out = console()
        for r in results:
            if r["valid"]:
                out.print(f"[green]ok[/green] {r['file']} (coop {r['coop_id']})", markup=True,
                          highlight=False)
            else:
                for line in r["lines"]:
                    out.print(line, markup=False)
        if not ok:
            bad = sum(1 for r in results if not r["valid"])
            out.print(f"{bad} of {len(results)} file(s) invalid", markup=False)
    raise typer.Exit(EXIT_OK if ok else EXIT_BAD_INPUT)


# --- policy check ----------------------------------------------------------------------


def decision_json(decision: "PolicyDecision") -> dict[str, Any]:
    """The ``policy check --json`` document."""
    body = decision.model_dump(mode="json")
    body["evaluated_at"] = datetime.fromtimestamp(
        decision.evaluated_at_ms / 1000, tz=timezone.utc
    ).strftime("%Y-%m-%dT%H:%M:%SZ")
    body["feasible"] = decision.constraints.satisfiable
    return body


def _print_decision(decision: "PolicyDecision") -> None:
    from rich.markup import escape
    from rich.table import Table

    out = console()
    allowed = decision.decision == "allow"
    colour = "green" if allowed else "red"
    out.print(
        f"[bold {colour}]{'ALLOW' if allowed else 'REJECT'}[/] "
        f"{escape(decision.member)} in {escape(decision.coop_id)} "
        f"({decision.enforcement_mode.value} enforcement)"
    )
    prio = decision.adjusted_priority.value
    if decision.adjusted_priority != decision.submitted_priority:
        prio = f"{decision.submitted_priority.value} -> {prio} (member priority rule)"
    out.print(f"priority: {prio}", markup=False)
    if decision.violations:
        note = " (admitted anyway)" if allowed else ""
        table = Table(title=f"{len(decision.violations)} violation(s){note}", show_lines=False)
        table.add_column("rule", no_wrap=True)
        table.add_column("why")
        table.add_column("to pass")
        for v in decision.violations:
            table.add_row(escape(v.rule), escape(v.reason), escape(v.remedy or ""))
        out.print(table)
    c = decision.constraints
    lines = []
    if c.required_region:
        lines.append(f"region: {c.required_region}")
    if c.allowed_executors:
        lines.append(f"only on: {', '.join(c.allowed_executors)}")
    if c.forbidden_executors:
        lines.append(f"never on: {', '.join(c.forbidden_executors)}")
    for req in c.required_capabilities:
        lines.append(f"needs: {req.capability}" + (f" >= {req.min_version}" if req.min_version else ""))
    for conflict in c.conflicts:
        lines.append(f"no executor can be feasible: {conflict}")
    if lines:
        out.print("placement constraints:", markup=False)
        for line in lines:
            out.print(f"  {line}", markup=False)


@policy_app.command("check")
def policy_check(
    policy_file: Annotated[Path, typer.Argument(metavar="FILE", help="Policy file (ICN JSON format).",
                                                show_default=False)],
    task_file: Annotated[Path, typer.Option("--task", help="TASK.json: id, coop_id, submitter, priority.",
                                            show_default=False)],
    usage_file: Annotated[Optional[Path], typer.Option(
        "--usage", help="USAGE.json: cpu_hours_this_month, concurrent_tasks, credits_spent_this_month."
    )] = None,
    at: Annotated[Optional[str], typer.Option(
        "--at", help="Evaluate at this UTC time (ISO 8601, e.g. 2026-11-22T23:00:00Z); default now."
    )] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Decide one task offline, as the node's admission would: exit 0 allow, 3 reject."""
    now_ms = _parse_at(at)
    errors: list[str] = []
    policy = task = usage = None
    for loader, arg in ((load_policy_file, policy_file), (load_task_file, task_file),
                        (load_usage_file, usage_file)):
        try:
            value = loader(arg)
        except BadInput as e:
            errors.extend(e.lines())
            continue
        if loader is load_policy_file:
            policy = value
        elif loader is load_task_file:
            task = value
        else:
            usage = value
    if policy is not None and task is not None and task.coop_id != policy.coop_id:
        errors.append(f"{task_file}: coop_id: is {task.coop_id!r} but the policy is for {policy.coop_id!r}")
    if errors:
        if as_json:
            emit_json({"error": "bad input", "errors": errors})
        else:
            _print_bad(errors)
        raise typer.Exit(EXIT_BAD_INPUT)
    assert policy is not None and task is not None and usage is not None

    if now_ms is None:
        from icn_p2p.core.clock import SystemClock

        now_ms = SystemClock().now_ms()
    from icn_p2p.policy.admission import evaluate

    decision = evaluate(policy, task, task.submitter, usage, now_ms)
    if as_json:
        emit_json(decision_json(decision))
    else:
        _print_decision(decision)
    raise typer.Exit(EXIT_OK if decision.decision == "allow" else EXIT_REJECTED)


# --- online commands (talk to a running node) ------------------------------------------

from icn_p2p.cli.online import register as _register_online  # noqa: E402

_register_online(app)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="icnctl")


if __name__ == "__main__":  # pragma: no cover
    main()
