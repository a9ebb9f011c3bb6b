"""The ``conveyor docs`` and ``conveyor search`` commands.

The engine's CLI calls :func:`register` to add them to its typer app::

    conveyor docs INPUT... --run-dir DIR [--cpus N] [--gpus N] [--ram SIZE]
                           [--executor local|inline|ray] [--address ADDR] [--quiet]
                           [--detach] [--model PATH_OR_NAME] [--chunk-size N]
                           [--chunk-overlap N] [--chunk-unit chars|tokens]
    conveyor search DIR "query" [-k 5] [--json]

``docs`` exits 0 when every document went through, 1 when some failed (they
are listed with their reasons), 2 on a usage error (nothing ran), 130 when
interrupted (run the same command again to resume). ``--gpus 0`` runs the
embed stage on the CPU even on a machine with a GPU. ``--model`` and the
chunk options are :func:`~conveyor.docs.pipeline.build_pipeline`'s; resuming
with no INPUT and none of them keeps those the run was built with.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any, List, Optional

import typer

from .. import rundir
from ..cli.common import (
    DETACH_HELP,
    DETACH_OPTION,
    console,
    detach_now,
    finish,
    run_or_exit,
    usage_error,
)
from ..origin import Origin
from ..result import open_run
from .archives import input_items
from .errors import IndexMissing, ModelError, RemoteInputError
from .pipeline import build_pipeline
from .remote import check, is_remote
from .search import search as run_search


def register(app: typer.Typer) -> None:
    """Add the ``docs`` and ``search`` commands to ``app``."""
    app.command("docs")(docs)
    app.command("search")(search)


def docs(
    inputs: List[str] = typer.Argument(None, help=(
        "PDFs, folders and archives (zip, tar, 7z, rar), local or at an fsspec URL "
        "(s3://bucket/prefix/). None: resume the run in --run-dir.")),
    run_dir: Path = typer.Option(..., "--run-dir", help="Where the ledger, index and logs live."),
    cpus: Optional[float] = typer.Option(None, help="CPUs the run may use (default: detected)."),
    gpus: Optional[int] = typer.Option(None, help=(
        "GPUs the run may use (default: detected); 0 runs embedding on the CPU.")),
    ram: Optional[str] = typer.Option(None, help="RAM the run may use, e.g. 8GiB."),
    executor: str = typer.Option("local", help="local (worker processes), inline or ray."),
    address: Optional[str] = typer.Option(None, help="Ray cluster to join (ray only)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    detach: bool = typer.Option(False, DETACH_OPTION, help=DETACH_HELP),
    model: Optional[str] = typer.Option(None, "--model", help=(
        "Embedding model: a folder holding a sentence-transformers model, or a name in the "
        "local Hugging Face cache (default: the shipped all-MiniLM-L6-v2).")),
    chunk_size: Optional[int] = typer.Option(None, "--chunk-size", help=(
        "Most chars (or tokens) in a chunk (default: 1000 chars; in tokens, all the model "
        "reads).")),
    chunk_overlap: Optional[int] = typer.Option(None, "--chunk-overlap", help=(
        "Chars (or tokens) repeated from the chunk before (default: 15% of the size).")),
    chunk_unit: Optional[str] = typer.Option(None, "--chunk-unit", help=(
        "chars, or tokens of the model's own tokenizer (default: chars).")),
) -> None:
    """Turn PDFs (folders, archives) into a searchable index; rerun to resume."""
    given = corpus(inputs, run_dir)
    if gpus is not None and gpus < 0:
        usage_error(f"--gpus must be >= 0, got {gpus}")
    options = {"model": model, "chunk_size": chunk_size, "chunk_overlap": chunk_overlap,
               "chunk_unit": chunk_unit}
    if given is None and all(v is None for v in options.values()):
        options = recorded_options(run_dir)
    options["chunk_unit"] = options.get("chunk_unit") or "chars"
    try:
        pipe = build_pipeline(embed_gpus=None if gpus is None else min(gpus, 1), **options)
    except (ValueError, ModelError) as exc:
        usage_error(str(exc))
    if detach:
        detach_now(run_dir)
    result = run_or_exit(pipe, given, run_dir=run_dir, executor=executor, cpus=cpus, ram=ram,
                         gpus=gpus, address=address, progress=not quiet)
    with result:
        _report(result, quiet)


def corpus(inputs: list[str] | None, run_dir: Path) -> Any:
    """The run's input items from INPUT paths and URLs (listed lazily as the run takes
    them), or None to resume the run in ``run_dir``; a usage error where a path or URL
    names nothing, or nothing is given and nothing to resume."""
    missing = [p for p in inputs or [] if not is_remote(p) and not os.path.exists(p)]
    if missing:
        usage_error(f"no such file or folder: {', '.join(missing)}")
    for url in filter(is_remote, inputs or []):
        try:
            check(url)
        except RemoteInputError as exc:
            usage_error(str(exc))
    if not inputs and not rundir.is_run(run_dir):
        usage_error(f"give INPUT paths (there is no run in {run_dir} to resume)")
    return input_items(inputs) if inputs else None


def recorded_options(run_dir: Path) -> dict[str, Any]:
    """The model and chunk options the run in ``run_dir`` was built with (none recorded:
    the defaults)."""
    with open_run(run_dir) as result:
        text = result.ledger.get_meta("pipeline_origin")
    arguments = Origin.from_json(text).arguments if text else {}
    return {k: arguments[k] for k in ("model", "chunk_size", "chunk_overlap", "chunk_unit")
            if k in arguments}


def _report(result: Any, quiet: bool) -> None:
    def index_made() -> None:
        index = dict(result.outputs("index"))
        if "index" in index:
            info = index["index"]
            console.print(f"index: {info['chunks']} chunks from {info['documents']} documents "
                          f"in {Path(info['index']).parent}", highlight=False)
            console.print(f"search it: conveyor search {result.run_dir} \"your question\"",
                          highlight=False, markup=False)

    def summary() -> None:
        print_gone(result)
        print_skipped(result)
        index_made()

    finish(result, quiet, summary)


SKIPPED_SHOWN = 10


def print_gone(result: Any) -> None:
    """The files no longer in a folder given again, whose results this run dropped."""
    gone = (result.inputs or {}).get("gone", 0)
    if gone:
        console.print(f"{gone} file(s) gone from their folder since the last run, their "
                      f"results dropped (e.g. {', '.join(result.inputs['gone_keys'][:3])})",
                      highlight=False, markup=False)


def print_skipped(result: Any) -> None:
    """The files and members left out as not documents, each with its reason (the first
    few, read from the ledger; the count comes from the run's counts, so a corpus with
    many skips is not loaded to print ten)."""
    total = result.counts.get("skipped", {}).get("done", 0)
    if not total:
        return
    console.print(f"{total} file(s) skipped, not documents:", highlight=False)
    for key, value in itertools.islice(result.outputs("skipped"), SKIPPED_SHOWN):
        console.print(f"  {key}: {value['reason']}", highlight=False, markup=False)
    if total > SKIPPED_SHOWN:
        console.print(f"  … and {total - SKIPPED_SHOWN} more (conveyor status "
                      f"{result.run_dir} --json, or open_run(dir).outputs(\"skipped\"))",
                      highlight=False, markup=False)


def search(
    run_dir: Path = typer.Argument(..., help="A run directory made by `conveyor docs`."),
    query: str = typer.Argument(..., help="What to look for, in words."),
    k: int = typer.Option(5, "-k", "--k", min=1, help="How many hits."),
    as_json: bool = typer.Option(False, "--json", help="One JSON array of hits."),
) -> None:
    """Search the index of a `conveyor docs` run."""
    try:
        hits = run_search(run_dir, query, k=k)
    except (IndexMissing, ModelError) as exc:
        usage_error(str(exc))
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
