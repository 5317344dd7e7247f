"""``icnctl`` commands for governed policies: domains, proposals, votes, rollback.

``domain genesis`` is offline (it signs with key files on this machine); the
rest talk to a running node, which signs proposals and votes with its own
key — the node's operator is the coop member.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from icn_p2p.identity.keys import IdentityError, load_key_file

from .online import CoopOpt, JsonOpt, _group, _load_policy, _print, call, emit_json, fail


def policy_propose(
    ctx: typer.Context,
    policy_file: Annotated[Path, typer.Option("--policy", help="The new policy (ICN JSON) of a governed coop.",
                                              show_default=False)],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the history).")] = "",
    effective_at_ms: Annotated[Optional[int], typer.Option(
        "--effective-at-ms", min=0, help="Keep the current version until this time (ms since epoch).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Propose the next version; it takes effect once enough domain members approve."""
    policy = _load_policy(policy_file, as_json)
    result = call(ctx, as_json, "policy.propose", policy=policy.to_icn_dict(), reason=reason,
                  effective_at_ms=effective_at_ms)
    if as_json:
        emit_json(result)
        return
    _print(f"proposal {result['proposal_id']} for {result['coop_id']} version {result['version']}: "
           f"{result['status']}")
    if result["status"] == "pending":
        _print(f"next: other members run: icnctl policy approve {result['proposal_id']}")


def policy_approve(
    ctx: typer.Context,
    proposal_id: Annotated[str, typer.Argument(help="Proposal id (64 hex digits).", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """Vote for a proposal with this node's key."""
    result = call(ctx, as_json, "policy.approve", proposal_id=proposal_id)
    if as_json:
        emit_json(result)
        return
    version = f" (version {result['version']})" if result.get("version") else ""
    _print(f"proposal {proposal_id}: {result['status']}{version}")


def policy_rollback(
    ctx: typer.Context,
    coop_id: CoopOpt,
    to_version: Annotated[int, typer.Option("--to-version", min=1, help="The version whose body comes back.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the history).")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Propose a new version whose body is an earlier one (approved like any other change)."""
    result = call(ctx, as_json, "policy.rollback", coop_id=coop_id, to_version=to_version, reason=reason)
    if as_json:
        emit_json(result)
        return
    _print(f"rollback of {coop_id} to the body of version {to_version}: proposal {result['proposal_id']} "
           f"(version {result['version']}) {result['status']}")


def domain_genesis(
    name: Annotated[str, typer.Option("--name", help="Domain name, as in the policy's governance_domain.",
                                      show_default=False)],
    keys: Annotated[list[Path], typer.Option("--key", help="A founding member's key file (repeat).",
                                             show_default=False)],
    threshold: Annotated[int, typer.Option("--threshold", min=1, help="Approvals needed for a change.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the signed genesis (JSON).")],
) -> None:
    """Found a governance domain offline: every founding member's key signs the genesis."""
    from icn_p2p.policy.governance import DomainGenesis, GovernanceError

    try:
        members = [load_key_file(k) for k in keys]
    except IdentityError as exc:
        fail(str(exc), as_json=False)
    try:
        genesis = DomainGenesis.create(name, members, threshold, time.time_ns() // 1_000_000)
    except (GovernanceError, ValueError) as exc:
        fail(f"cannot found {name}: {exc}", as_json=False)
    wire = genesis.to_wire()
    wire["signatures"] = [{**s, "signature": s["signature"].hex()} for s in wire["signatures"]]
    out.write_text(json.dumps(wire, indent=2) + "\n")
    _print(f"genesis of {name} ({len(members)} members, threshold {threshold}) written to {out}")
    _print(f"next: icnctl domain found --genesis {out}")


def domain_found(
    ctx: typer.Context,
    genesis_file: Annotated[Path, typer.Option("--genesis", help="Signed genesis (from `domain genesis`).",
                                               show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """Give a node a domain's signed genesis; it spreads to the mesh."""
    try:
        genesis: Any = json.loads(genesis_file.read_text())
    except (OSError, ValueError) as exc:
        fail(f"{genesis_file}: {exc}", as_json=as_json)
    result = call(ctx, as_json, "domain.found", genesis=genesis)
    if as_json:
        emit_json(result)
        return
    _print(f"domain {result['name']}: {result['status']}, {len(result['members'])} members, "
           f"threshold {result['threshold']}")


def domain_show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Domain name.", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """A domain's members and threshold as this node holds them."""
    result = call(ctx, as_json, "domain.get", name=name)
    if as_json:
        emit_json(result)
        return
    _print(f"domain {result['name']} (state {result['seq']}, genesis {result['genesis_id'][:12]}): "
           f"threshold {result['threshold']} of {len(result['members'])}")
    for member in result["members"]:
        _print(f"  {member}")


def register(app: typer.Typer) -> None:
    policy = _group(app, "policy", "Cooperative scheduling policies.")
    policy.command("propose")(policy_propose)
    policy.command("approve")(policy_approve)
    policy.command("rollback")(policy_rollback)
    domain = _group(app, "domain", "Governance domains: who may change a coop's policy.")
    domain.command("genesis")(domain_genesis)
    domain.command("found")(domain_found)
    domain.command("show")(domain_show)
