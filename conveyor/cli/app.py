"""The ``conveyor`` command: a thin typer app over the library.

Exit codes: 0 the run is ok; 1 some items failed (or are left pending);
2 a usage, definition or input error (nothing ran); 130 interrupted (rerun
the same command to resume).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Iterator, List, Optional

import typer
from rich.table import Table

from .. import origin, rundir, runstate
from ..dataset.cli import register as register_dataset
from ..docs.cli import register as register_docs
from ..engine.prepare import plan_rerun
from ..errors import (
    ConveyorError,
    ExecutorUnavailable,
    InputError,
    LedgerError,
    PipelineError,
    RunInterrupted,
    RunLockedError,
    StoreError,
)
from ..observe.report import analyse, render, summary_json
from ..observe.usage import warnings
from ..optional import require
from ..pipeline import Pipeline
from ..resources import DEFAULT_PRICES, Budget
from ..result import RunResult, open_run
from .attach import register as register_attach
from .common import (
    DETACH_HELP,
    DETACH_OPTION,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    console,
    detach_now,
    errors,
    print_counts,
    print_warnings,
)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Run multi-stage pipelines whose stages need different hardware.")
PRICE_HELP = ("A price per hour: cpu=0.04 (per CPU), ram=0.005 (per GB), gpu=2.5 (per GPU); "
              "repeatable.")


def load_pipeline(spec: str, arguments: dict[str, Any] | None = None,
                  root: str | None = None) -> Pipeline:
    """The pipeline named by ``module:attr`` or ``path/to/file.py:attr`` (see
    :func:`conveyor.origin.load`); a usage error when it cannot be loaded."""
    try:
        return origin.load(spec, arguments, root)
    except PipelineError as exc:
        raise typer.BadParameter(str(exc)) from None


def _read_inputs(path: Path) -> Iterator[Any]:
    """Inputs from a file: one string per line, or one JSON value per line for ``.jsonl``."""
    is_json = path.suffix == ".jsonl"
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if not is_json:
                yield line
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{number}: not JSON: {exc}") from None


@app.command()
def run(
    pipeline: str = typer.Argument(..., help="MODULE:PIPELINE or path/to/file.py:PIPELINE"),
    inputs: List[str] = typer.Argument(None, help="Inputs (strings; each is its own key)."),
    inputs_file: Optional[Path] = typer.Option(None, "--inputs-file", help=(
        "A file of inputs: one per line (JSON values if it ends in .jsonl).")),
    run_dir: Path = typer.Option(..., "--run-dir", help="Where the ledger and outputs live."),
    executor: str = typer.Option("local", help="local (worker processes), inline or ray."),
    address: Optional[str] = typer.Option(None, help=(
        "Ray cluster to join with --executor ray: auto, ray://HOST:PORT "
        "(default: start a local Ray instance).")),
    store: Optional[str] = typer.Option(None, help=(
        "Where large values live: an fsspec URL or path (default: the run dir).")),
    cpus: Optional[float] = typer.Option(None, help="CPUs the run may use (default: detected)."),
    ram: Optional[str] = typer.Option(None, help="RAM the run may use, e.g. 8GiB."),
    gpus: Optional[int] = typer.Option(None, help="GPUs the run may use (default: NVML)."),
    force: List[str] = typer.Option([], "--force", help="Recompute this stage (repeatable)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    bench: bool = typer.Option(False, "--bench", help=(
        "Benchmark mode: per-stage wall time, items/s, mean/p95 item time, peak RSS and "
        "GPU memory, printed and stored in RUN_DIR/bench.json.")),
    detach: bool = typer.Option(False, DETACH_OPTION, help=DETACH_HELP),
) -> None:
    """Run a pipeline; running again on the same --run-dir resumes."""
    if detach:
        detach_now(run_dir)
    try:
        pipe = load_pipeline(pipeline)
        given: Any = None
        if inputs or inputs_file:
            given = list(inputs or [])
            if inputs_file:
                given = _chain(given, _read_inputs(inputs_file))
        result = pipe.run(given, run_dir=run_dir, executor=executor, cpus=cpus, ram=ram,
                          gpus=gpus, force=force, progress=not quiet, bench=bench,
                          address=address, store=store)
    except RunInterrupted as exc:
        errors.print(f"[yellow]{exc}[/]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (PipelineError, InputError, RunLockedError, LedgerError, ExecutorUnavailable,
            StoreError, KeyError) as exc:
        errors.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    with result:
        _finish(result, quiet)


def _chain(first: list[Any], rest: Iterator[Any]) -> Iterator[Any]:
    yield from first
    yield from rest


def _finish(result: RunResult, quiet: bool) -> None:
    if not quiet:
        print_counts(result)
    print_warnings(result)
    missing = (result.inputs or {}).get("missing", 0)
    if missing:
        errors.print(f"note: {missing} input(s) recorded in this run directory were not given "
                     f"this time (e.g. {', '.join(result.inputs['missing_keys'][:3])}); "
                     f"their results are kept")
    failed = sum(c["failed"] for c in result.counts.values())
    if result.ok:
        raise typer.Exit(EXIT_OK)
    if failed:
        errors.print(f"[red]{failed} item(s) failed[/]; see: conveyor failures {result.run_dir}")
    else:
        errors.print("[yellow]the run did not finish every item[/]")
    raise typer.Exit(EXIT_FAILED)


def _open(run_dir: Path) -> RunResult:
    try:
        return open_run(run_dir)
    except LedgerError as exc:
        errors.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_USAGE) from None


@app.command()
def status(run_dir: Path = typer.Argument(..., help="A run directory."),
           as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
           plan: bool = typer.Option(False, "--plan", help=(
               "Show what running the pipeline again would reuse and recompute.")),
           pipeline: Optional[str] = typer.Option(None, "--pipeline", help=(
               "MODULE:PIPELINE to plan with (default: the one this run recorded)."))) -> None:
    """Show whether a run is running, stopped, finished or crashed, and its per-stage counts.

    With --plan: what running the pipeline again would reuse and recompute.
    """
    starting = runstate.driver(run_dir) if not rundir.is_run(run_dir) else None
    if starting is not None:  # a detached driver that has not opened its ledger yet
        found = {"state": runstate.RUNNING, "ok": None, "exit_code": None, **starting}
        if as_json:
            print(json.dumps({"state": found}))
        else:
            console.print(runstate.describe(found), highlight=False, markup=False)
        return
    with _open(run_dir) as result:
        if plan:
            pipe = _recorded_pipeline(result, pipeline)
            rows = plan_rerun(pipe, result.ledger)
            if as_json:
                print(json.dumps(rows))
                return
            table = Table(title=f"rerun plan — {result.run_dir}")
            for column in ("stage", "action", "why", "done", "failed", "pending"):
                table.add_column(column, justify="right" if column in ("done", "failed",
                                                                        "pending") else "left")
            for row in rows:
                table.add_row(*(str(row[c]) for c in ("stage", "action", "why", "done",
                                                        "failed", "pending")))
            console.print(table)
        elif as_json:
            usage = result.usage()
            stages = {name: {**c, **(usage[name].as_json() if name in usage else {})}
                      for name, c in result.counts.items()}
            print(json.dumps({"pipeline": result.pipeline, "ok": result.ok, "stages": stages,
                              "spilled": result.spilled, "state": result.status(),
                              "setups": result.setups, "warnings": warnings(usage)}))
        else:
            console.print(runstate.describe(result.status()), highlight=False, markup=False)
            print_counts(result)


def _recorded_pipeline(result: RunResult, override: str | None) -> Pipeline:
    """The pipeline a run recorded (its :class:`~conveyor.origin.Origin`), or ``override``."""
    if override:
        return load_pipeline(override)
    meta = result.ledger.get_meta
    if meta("pipeline_origin") is not None:
        found = origin.Origin.from_json(meta("pipeline_origin"))
    elif meta("pipeline_ref") is not None:  # a run dir from before origins were recorded
        found = origin.Origin(meta("pipeline_ref"), meta("cwd"))
    else:
        errors.print(f"[red]error:[/] {result.run_dir} does not record how to load its "
                     f"pipeline; give --pipeline MODULE:PIPELINE")
        raise typer.Exit(EXIT_USAGE)
    return load_pipeline(found.ref, found.arguments, found.root)


@app.command()
def retry(run_dir: Path = typer.Argument(..., help="A run directory."),
          stage: List[str] = typer.Option([], "--stage", help="Only this stage (repeatable)."),
          pipeline: Optional[str] = typer.Option(None, "--pipeline", help=(
              "MODULE:PIPELINE (default: the one this run recorded).")),
          executor: str = typer.Option("local", help="local (worker processes), inline or ray."),
          address: Optional[str] = typer.Option(None, help="Ray cluster to join (ray only)."),
          cpus: Optional[float] = typer.Option(None, help="CPUs the run may use."),
          ram: Optional[str] = typer.Option(None, help="RAM the run may use, e.g. 8GiB."),
          gpus: Optional[int] = typer.Option(None, help="GPUs the run may use."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output.")) -> None:
    """Retry the failed items of a run (of --stage only), with a fresh set of retries."""
    with _open(run_dir) as result:
        pipe = _recorded_pipeline(result, pipeline)
    try:
        result = pipe.run(None, run_dir=run_dir, executor=executor, cpus=cpus, ram=ram,
                          gpus=gpus, retry=stage or True, progress=not quiet, address=address)
    except RunInterrupted as exc:
        errors.print(f"[yellow]{exc}[/]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (PipelineError, InputError, RunLockedError, LedgerError, ExecutorUnavailable,
            StoreError, KeyError) as exc:
        errors.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    with result:
        _finish(result, quiet)


@app.command()
def failures(run_dir: Path = typer.Argument(..., help="A run directory."),
             stage: Optional[str] = typer.Option(None, help="Only this stage."),
             as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
             lines: int = typer.Option(6, help="Traceback lines to show per item.")) -> None:
    """List failed items with their reason and the end of their traceback."""
    with _open(run_dir) as result:
        rows = result.failures(stage)
        if as_json:
            print(json.dumps(rows))
            return
        if not rows:
            console.print("no failed items")
            return
        for row in rows:
            console.print(f"[bold]{row['stage']}[/] {row['key']} "
                          f"(attempts: {row['attempts']}): [red]{row['error']}[/]",
                          highlight=False)
            if row["traceback"]:
                tail = row["traceback"].rstrip().splitlines()[-lines:]
                console.print("\n".join("    " + line for line in tail), highlight=False,
                              markup=False)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory."),
           out: Optional[Path] = typer.Option(None, "-o", "--out", help=(
               "Where to write the HTML (default: RUN_DIR/report.html).")),
           price: List[str] = typer.Option([], "--price", help=PRICE_HELP),
           as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON too.")
           ) -> None:
    """Write a self-contained HTML report of a run.

    Timeline, throughput, utilisation, queues, the bottleneck in words, failures and cost.
    """
    try:
        analysis = analyse(run_dir, _prices(price))
    except (ValueError, LedgerError) as exc:
        errors.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    path = out or run_dir / rundir.REPORT
    path.write_text(render(analysis), encoding="utf-8")
    if as_json:
        print(json.dumps(summary_json(analysis)))
    else:
        console.print(f"report: {path}")
        console.print(analysis.verdict, highlight=False)


def _prices(options: list[str]) -> dict[str, float]:
    """``--price name=value`` options as a dict."""
    prices: dict[str, float] = {}
    for item in options:
        name, sep, value = item.partition("=")
        if not sep or name not in DEFAULT_PRICES:
            raise typer.BadParameter(f"--price takes cpu=, ram= or gpu=, got {item!r}")
        try:
            prices[name] = float(value)
        except ValueError:
            prices[name] = math.nan
        if not math.isfinite(prices[name]) or prices[name] < 0:
            raise typer.BadParameter(f"--price {name}= needs a number >= 0, got {value!r}")
    return prices


@app.command()
def serve(
    pipeline: str = typer.Argument(..., help="MODULE:PIPELINE or path/to/file.py:PIPELINE"),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    cpus: Optional[float] = typer.Option(None, help="CPUs to use (default: all)."),
    ram: Optional[str] = typer.Option(None, help="RAM to use, e.g. 8GiB (default: all)."),
    gpus: Optional[int] = typer.Option(None, help="GPUs to use (default: all NVML sees)."),
    timeout: float = typer.Option(60.0, help="Seconds a request may take before a 504."),
    max_queue: int = typer.Option(1000, "--max-queue", help=(
        "Requests held at once; more get 503 with Retry-After.")),
    grace: float = typer.Option(30.0, help="Seconds in-flight requests get on shutdown."),
    price: List[str] = typer.Option([], "--price", help=PRICE_HELP),
    debug: bool = typer.Option(False, "--debug", help="Put tracebacks in 500 answers."),
) -> None:
    """Serve a pipeline over HTTP until SIGTERM or Ctrl-C, answering requests in flight.

    POST /run, /run/batch and /stages/NAME; GET /health, /metrics and /docs.
    """
    try:
        for module in ("fastapi", "uvicorn", "prometheus_client"):
            require(module, "serve", "conveyor serve")
    except ConveyorError as exc:
        errors.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    from ..serve.app import create_app, run  # needs the serve extra, checked above

    pipe = load_pipeline(pipeline)
    try:
        app_ = create_app(pipe, budget=Budget.detect(cpus=cpus, ram=ram, gpus=gpus),
                          timeout=timeout, max_queue=max_queue, debug=debug,
                          prices=_prices(price), grace=grace)
    except ConveyorError as exc:
        errors.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    run(app_, host=host, port=port, grace=grace)


register_attach(app)  # conveyor attach, conveyor stop
register_docs(app)  # conveyor docs, conveyor search
register_dataset(app)  # conveyor dataset


def main() -> None:
    """Entry point of the ``conveyor`` script."""
    try:
        app()
    except ConveyorError as exc:  # anything not mapped above is still reported plainly
        errors.print(f"[red]error:[/] {exc}")
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
