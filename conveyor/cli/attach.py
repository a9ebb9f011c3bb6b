"""The ``conveyor attach`` and ``conveyor stop`` commands: a running run, from anywhere.

``attach`` shows a run's live progress (read from its ledger, as ``conveyor
status`` does) until its driver exits, then exits with the run's exit code
(:mod:`conveyor.runstate`); Ctrl-C leaves the run running. ``stop`` stops the
driver as Ctrl-C would (nothing is lost; the same command resumes) and returns
once it has exited. Both work on any run, detached or not.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from .. import rundir, runstate
from ..errors import ConveyorError
from ..observe.progress import LIVE_SECONDS, ProgressModel, ProgressView, StageProgress
from ..result import RunResult
from .common import EXIT_INTERRUPTED, EXIT_OK, errors, print_counts, usage_error


def register(app: typer.Typer) -> None:
    """Add the ``attach`` and ``stop`` commands to ``app``."""
    app.command("attach")(attach)
    app.command("stop")(stop)


def attach(run_dir: Path = typer.Argument(..., help="A run directory."),
           quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output.")
           ) -> None:
    """Follow a running run until it ends, exiting with its exit code; Ctrl-C leaves it running."""
    if runstate.driver(run_dir) is None and not rundir.is_run(run_dir):
        usage_error(f"{run_dir} is not a conveyor run directory (no {rundir.LEDGER})")
    try:
        while not rundir.is_run(run_dir):  # a detached driver still starting
            if runstate.driver(run_dir) is None:
                break
            time.sleep(LIVE_SECONDS)
        seen = runstate.driver(run_dir)  # following may outlast the run: wait for its exit
        with RunResult(run_dir) as result:
            if not quiet:
                _follow(result)
            runstate.wait(run_dir, seen=seen)
            found = result.status()
            print_counts(result)
    except KeyboardInterrupt:
        errors.print(f"detached; the run goes on (conveyor attach {run_dir} to follow it again, "
                     f"conveyor stop {run_dir} to stop it)", markup=False, highlight=False)
        raise typer.Exit(EXIT_OK) from None
    errors.print(runstate.describe(found), markup=False, highlight=False)
    raise typer.Exit(found["exit_code"] if found["exit_code"] is not None else EXIT_INTERRUPTED)


def _follow(result: RunResult) -> None:
    """Draw the run's counts until its driver has exited."""
    model = ProgressModel(result.stages)
    view = ProgressView(model)
    view.start()
    try:
        running = True
        while running:
            running = runstate.driver(result.run_dir) is not None  # then the last counts
            model.taking = runstate.intake(result.run_dir) if running else None
            for name, c in result.counts.items():
                if name not in model.stages:  # recorded after we first looked
                    model.stages[name] = StageProgress(name, name)
                model.update(name, done=c["done"], pending=c["pending"], running=c["running"],
                             failed=c["failed"], routed_out=c["routed-out"])
            view.refresh()
            if running:
                time.sleep(LIVE_SECONDS)
    finally:
        view.stop()


def stop(run_dir: Path = typer.Argument(..., help="A run directory."),
         timeout: Optional[float] = typer.Option(None, help=(
             "Seconds to wait for the driver to exit (default: as long as it takes)."))
         ) -> None:
    """Stop a running run cleanly, as Ctrl-C does; returns once its driver has exited.

    Nothing finished is lost: running the same command again resumes it.
    """
    try:
        stopped = runstate.stop(run_dir, timeout)
    except (ConveyorError, TimeoutError) as exc:
        usage_error(str(exc))
    if stopped is None:
        errors.print(f"{run_dir} has no running driver", markup=False, highlight=False)
        raise typer.Exit(EXIT_OK)
    if rundir.is_run(run_dir):
        with RunResult(run_dir) as result:
            found = result.status()
    else:  # stopped before it opened its ledger
        found = runstate.state(run_dir, lambda: False)
    errors.print(f"stopped the driver (pid {stopped['pid']}): {runstate.describe(found)}",
                 markup=False, highlight=False)
    raise typer.Exit(EXIT_OK)
