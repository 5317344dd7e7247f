"""``icn-sim``: run a scenario of real nodes on localhost and write its report.

    icn-sim run simulations/scenarios/quickstart.toml --out demo-out
    icn-sim run partition --scale full --in-process --out out/partition
    icn-sim list
    icn-sim validate my-scenario.toml

Exit code 0 when every assertion passed, 1 when one failed, 2 when the
scenario could not be run.
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

import trio
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import schema as sc
from .engine import Observations, Simulation
from .figures import build_report
from .narration import Narrator
from .report import write_all

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Simulate an icn-p2p mesh on localhost: scenarios, reports, plots.")


def resolve_path(scenario: str) -> Path:
    """A path, or the name of a shipped scenario (``quickstart``)."""
    p = Path(scenario)
    if p.exists():
        return p
    shipped = sc.SCENARIO_DIR / f"{scenario}.toml"
    if shipped.exists():
        return shipped
    raise sc.ScenarioError(f"{scenario}: no such file, and no shipped scenario of that name "
                           f"(see `icn-sim list`)")


async def run_scenario(scenario: sc.Scenario, out: Path, *, scale: str = "small", in_process: bool = True,
                       narrate: Any = None, command: str | None = None,
                       workdir: Path | None = None) -> dict[str, Any]:
    """Play ``scenario`` and write its report into ``out``; returns the report."""
    sim = Simulation(scenario, scale=scale, in_process=in_process, workdir=workdir,
                     narrate=narrate or (lambda kind, data: None))
    obs: Observations = await sim.run()
    report = build_report(obs)
    write_all(obs, report, Path(out), command=command)
    return report


def _quiet_logs(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, stream=sys.stderr,
                        format="%(levelname)s %(name)s %(message)s")
    if not verbose:
        for name in ("libp2p", "icn_p2p", "multiaddr", "simulations"):
            logging.getLogger(name).setLevel(logging.CRITICAL if name == "libp2p" else logging.ERROR)


@app.command()
def run(
    scenario: str = typer.Argument(..., help="scenario TOML file, or the name of a shipped scenario"),
    out: Path = typer.Option(Path("sim-out"), "--out", "-o", help="directory for report.json, report.md, plots"),
    in_process: bool = typer.Option(False, "--in-process", help="run all nodes in this process (larger N)"),
    scale: str = typer.Option("small", "--scale", help="small (seconds, CI) or full"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no narration, only the verdict"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="node logs on stderr"),
    keep: Optional[Path] = typer.Option(None, "--workdir", help="keep node data (keys, SQLite) here"),
) -> None:
    """Run a scenario and write DIR/report.json, DIR/report.md and PNG plots."""
    _quiet_logs(verbose)
    console = Console(highlight=False, emoji=False)
    try:
        scen = sc.load_scenario(resolve_path(scenario), scale=scale)
    except sc.ScenarioError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2)
    command = "icn-sim " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    narrator = None if quiet else Narrator(console, scen)
    interactive = console.is_terminal and not quiet

    async def main() -> dict[str, Any]:
        if not interactive:
            return await run_scenario(scen, out, scale=scale, in_process=in_process, narrate=narrator,
                                      command=command, workdir=keep)
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                            TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                            console=console, transient=True)
        narrator.console = progress.console
        length = max(a.at for a in scen.timeline) if scen.timeline else 0
        bar = progress.add_task(scen.scenario.name, total=max(length, 0.001), status="starting")

        async def tick() -> None:
            while True:
                sim = narrator.sim
                if sim is not None:
                    done = sum(1 for t in sim.obs.tasks.values() if t.state == "completed")
                    status = (f"{len(sim.obs.tasks)} submitted, {done} completed, "
                              f"{sum(1 for h in sim.handles.values() if h.alive)}/{sim.n} nodes up")
                    progress.update(bar, completed=min(sim.progress, length), status=status)
                await trio.sleep(0.2)

        with progress:
            async with trio.open_nursery() as n:
                n.start_soon(tick)
                report = await run_scenario(scen, out, scale=scale, in_process=in_process,
                                            narrate=narrator, command=command, workdir=keep)
                n.cancel_scope.cancel()
        return report

    try:
        report = trio.run(main)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        raise typer.Exit(130)
    if narrator is not None:
        narrator.console = console
        narrator.summary(report, out)
    else:
        verdict = "passed" if report["passed"] else "FAILED"
        console.print(f"{scen.scenario.name}: {verdict}; report in {out}/report.md")
    raise typer.Exit(0 if report["passed"] else 1)


@app.command("list")
def list_cmd() -> None:
    """List the shipped scenarios."""
    console = Console(highlight=False, emoji=False)
    table = Table("scenario", "nodes (small / full)", "description", box=None)
    for path in sc.shipped_scenarios():
        try:
            small = sc.load_scenario(path, scale="small")
            full = sc.load_scenario(path, scale="full")
        except sc.ScenarioError as exc:
            table.add_row(path.stem, "-", f"[red]invalid: {str(exc).splitlines()[-1].strip()}[/red]")
            continue
        desc = small.scenario.description.strip().splitlines()[0] if small.scenario.description else ""
        table.add_row(path.stem, f"{small.total_nodes} / {full.total_nodes}", desc)
    console.print(table)
    console.print(f"\n(files in {sc.SCENARIO_DIR}; run one with `icn-sim run NAME --out DIR`)")


@app.command()
def validate(scenario: str = typer.Argument(...),
             scale: str = typer.Option("small", "--scale")) -> None:
    """Check a scenario file without running it."""
    console = Console(highlight=False, emoji=False)
    try:
        scen = sc.load_scenario(resolve_path(scenario), scale=scale)
    except sc.ScenarioError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2)
    console.print(f"{scen.scenario.name}: valid ({scen.total_nodes} nodes, {len(scen.timeline)} actions, "
                  f"{len(scen.assertions)} assertions at {scale} scale)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
