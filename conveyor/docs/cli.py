"""The ``conveyor docs`` and ``conveyor search`` commands.

The engine's CLI calls :func:`register` to add them to its typer app::

    conveyor docs INPUT... --run-dir DIR [--cpus N] [--gpus N] [--ram SIZE]
                           [--executor local|inline] [--quiet]
    conveyor search DIR "query" [-k 5] [--json]

``docs`` exits 0 when every document went through, 1 when some failed (they
are listed with their reasons), 2 on a usage error (nothing ran), 130 when
interrupted (run the same command again to resume). ``--gpus 0`` runs the
embed stage on the CPU even on a machine with a GPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, List, Optional

import typer

from .. import rundir
from ..cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    console,
    errors,
    print_counts,
)
from ..errors import ConveyorError, RunInterrupted
from .archives import input_items
from .errors import IndexMissing
from .pipeline import build_pipeline
from .search import search as run_search


def register(app: typer.Typer) -> None:
    """Add the ``docs`` and ``search`` commands to ``app``."""
    app.command("docs")(docs)
    app.command("search")(search)


def docs(
    inputs: List[str] = typer.Argument(None, help=(
        "PDFs, folders and archives (zip, tar, 7z, rar). None: resume the run in --run-dir.")),
    run_dir: Path = typer.Option(..., "--run-dir", help="Where the ledger, index and logs live."),
    cpus: Optional[float] = typer.Option(None, help="CPUs the run may use (default: detected)."),
    gpus: Optional[int] = typer.Option(None, help=(
        "GPUs the run may use (default: detected); 0 runs embedding on the CPU.")),
    ram: Optional[str] = typer.Option(None, help="RAM the run may use, e.g. 8GiB."),
    executor: str = typer.Option("local", help="local (worker processes) or inline."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Turn PDFs (folders, archives) into a searchable index; rerun to resume."""
    missing = [p for p in inputs or [] if not os.path.exists(p)]
    if missing:
        errors.print(f"[red]error:[/] no such file or folder: {', '.join(missing)}")
        raise typer.Exit(EXIT_USAGE)
    if not inputs and not rundir.is_run(run_dir):
        errors.print(f"[red]error:[/] give INPUT paths (there is no run in {run_dir} to resume)")
        raise typer.Exit(EXIT_USAGE)
    if gpus is not None and gpus < 0:
        errors.print(f"[red]error:[/] --gpus must be >= 0, got {gpus}")
        raise typer.Exit(EXIT_USAGE)
    pipe = build_pipeline(embed_gpus=None if gpus is None else min(gpus, 1))
    try:
        given = input_items(inputs) if inputs else None
        result = pipe.run(given, run_dir=run_dir, executor=executor, cpus=cpus, ram=ram,
                          gpus=gpus, progress=not quiet)
    except RunInterrupted as exc:
        errors.print(f"[yellow]{exc}[/]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (ConveyorError, KeyError, ValueError) as exc:  # nothing ran: a usage error
        errors.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    with result:
        _report(result, quiet)


def _report(result: Any, quiet: bool) -> None:

    if not quiet:
        print_counts(result)
    failures = result.failures()
    if failures:
        errors.print(f"[red]{len(failures)} item(s) failed:[/]")
        for row in failures:
            errors.print(f"  {row['key']} ({row['stage']}): {row['error']}", markup=False,
                         highlight=False)
    index = dict(result.outputs("index"))
    if "index" in index and not quiet:
        info = index["index"]
        console.print(f"index: {info['chunks']} chunks from {info['documents']} documents in "
                      f"{Path(info['index']).parent}", highlight=False)
        console.print(f"search it: conveyor search {result.run_dir} \"your question\"",
                      highlight=False, markup=False)
    if result.ok:
        raise typer.Exit(EXIT_OK)
    if not failures:
        errors.print("[yellow]the run did not finish every item[/]")
    raise typer.Exit(EXIT_FAILED)


def search(
    run_dir: Path = typer.Argument(..., help="A run directory made by `conveyor docs`."),
    query: str = typer.Argument(..., help="What to look for, in words."),
    k: int = typer.Option(5, "-k", "--k", min=1, help="How many hits."),
    as_json: bool = typer.Option(False, "--json", help="One JSON array of hits."),
) -> None:
    """Search the index of a `conveyor docs` run."""
    try:
        hits = run_search(run_dir, query, k=k)
    except IndexMissing as exc:
        errors.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    if as_json:
        print(json.dumps(hits, ensure_ascii=False))
        return
    if not hits:
        console.print("no hits (the index is empty)")
    for rank, hit in enumerate(hits, 1):
        where = hit["path"] + (f" :: {hit['member']}" if hit["member"] else "")
        console.print(f"{rank}. {hit['score']:.3f}  {where}  page {hit['page']}", markup=False,
                      highlight=False)
        snippet = " ".join(hit["text"].split())
        console.print(f"   {snippet[:160]}{'…' if len(snippet) > 160 else ''}", markup=False,
                      highlight=False)
