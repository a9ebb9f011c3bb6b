"""What every ``conveyor`` command shares: exit codes (those of :mod:`conveyor.runstate`),
the two consoles, the counts table, ``--detach``.

Imported by :mod:`conveyor.cli.app` and by feature packages' commands
(:mod:`conveyor.docs.cli`), so that those need not import the app that
registers them.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from .. import detached, rundir
from ..errors import ConveyorError, RunInterrupted, RunLockedError
from ..observe.usage import StageUsage
from ..pipeline import Pipeline
from ..resources import format_size
from ..result import RunResult
from ..runstate import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

console = Console()
errors = Console(stderr=True)

DETACH_OPTION = "--detach"
DETACH_HELP = ("Run in the background, outliving this terminal: print the run dir and the "
               "driver's pid and return (then: conveyor status|attach|stop RUN_DIR).")
# The most --detach waits to see its driver hold the run or fail at once. It returns as soon
# as either happens (a couple of seconds); a loaded machine can take longer than that to
# import, and a driver that failed after --detach returned would be reported by nobody.
DETACH_WAIT = 60.0


def print_counts(result: RunResult) -> None:
    """The per-stage counts of a run, as a table on stdout, with what each stage declared
    and used (CPUs per worker while busy, peak RSS) where the last run measured it."""
    table = Table(title=f"{result.pipeline} — {result.run_dir}")
    table.add_column("stage")
    for column in ("done", "routed-out", "failed", "pending", "running", "cpu used/decl",
                   "peak RSS/ram"):
        table.add_column(column, justify="right")
    spilled = result.spilled
    usage = result.usage()
    for stage, c in result.counts.items():
        # a group's items are its partitions; say so, with what they spilled to disk
        name = f"{stage} (partitions, {format_size(spilled[stage])} spilled)" \
            if stage in spilled else stage
        table.add_row(name, *(str(c[k]) for k in ("done", "routed-out", "failed", "pending",
                                                  "running")), *_used(usage.get(stage)))
    console.print(table)


def _used(u: StageUsage | None) -> tuple[str, str]:
    if u is None:
        return "-", "-"
    cores = "-" if u.cores is None else f"{u.cores:.2f}"
    peak = format_size(u.peak_rss) if u.peak_rss else "-"
    return f"{cores}/{u.cpus:g}", f"{peak}/{format_size(u.ram)}" if u.ram else peak


def print_warnings(result: RunResult) -> None:
    """Stages whose declarations the run outgrew, on stderr (see :mod:`conveyor.observe.usage`)."""
    for warning in result.warnings:
        errors.print(f"[yellow]warning:[/] {warning}", highlight=False)


def finish(result: RunResult, quiet: bool, summary: Callable[[], None] | None = None) -> NoReturn:
    """End a command over a finished run: its counts (unless ``quiet``), every failed
    item with its reason, ``summary`` (what the run made), then the exit code."""
    if not quiet:
        print_counts(result)
    print_warnings(result)
    failures = result.failures()
    if failures:
        errors.print(f"[red]{len(failures)} item(s) failed:[/]")
        for row in failures:
            errors.print(f"  {row['key']} ({row['stage']}): {row['error']}", markup=False,
                         highlight=False)
    if summary is not None and not quiet:
        summary()
    if result.ok:
        raise typer.Exit(EXIT_OK)
    if not failures:
        errors.print("[yellow]the run did not finish every item[/]")
    raise typer.Exit(EXIT_FAILED)


def run_or_exit(pipe: Pipeline, inputs: Any, **options: Any) -> RunResult:
    """``pipe.run(inputs, **options)``, its errors mapped onto exit codes: interrupted
    130, anything conveyor refused before work began (definition, inputs, lock) 2."""
    try:
        return pipe.run(inputs, **options)
    except RunInterrupted as exc:
        errors.print(f"[yellow]{exc}[/]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (ConveyorError, KeyError, ValueError) as exc:  # nothing ran: a usage error
        errors.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_USAGE) from None


def usage_error(message: str) -> NoReturn:
    """Say what is wrong with the command line, and exit 2."""
    errors.print(f"[red]error:[/] {message}")
    raise typer.Exit(EXIT_USAGE)


def detach_now(run_dir: Path) -> NoReturn:
    """Run this command line again without ``--detach``, as a detached driver on
    ``run_dir`` (:mod:`conveyor.detached`); say where it is and exit 0, or with the
    driver's own code where it failed at once."""
    args = sys.argv[1:]
    cut = args.index("--") if "--" in args else len(args)  # after "--" it would be an input
    if DETACH_OPTION not in args[:cut]:
        usage_error(f"{DETACH_OPTION} works from the command line; from Python use "
                    f"pipe.run(..., detach=True)")
    args = [a for i, a in enumerate(args) if i >= cut or a != DETACH_OPTION]
    try:
        pid = detached.launch(run_dir, ["cli", *args])
    except RunLockedError as exc:
        usage_error(str(exc))
    code = detached.started(run_dir, pid, DETACH_WAIT)
    if code not in (None, EXIT_OK):
        errors.print(f"[red]the detached run ended at once (exit {code}):[/]")
        errors.print(detached.log_tail(run_dir), markup=False, highlight=False)
        raise typer.Exit(code)
    where = run_dir.absolute()
    # plain lines, never wrapped: scripts read the pid from them
    print(f"detached: {where} (driver pid {pid} on {socket.gethostname()}), "
          f"log: {where / rundir.DRIVER_LOG}")
    print(f"follow it: conveyor attach {where}   stop it: conveyor stop {where}")
    raise typer.Exit(EXIT_OK)
