"""The ``conveyor dataset`` command::

    conveyor dataset INPUT... --run-dir DIR --out DEST
        [--format parquet|jsonl] [--shard-size 256MiB] [--languages en,de]
        [--dedupe fuzzy|exact|none] [--pii redact|keep] [--rule NAME=VALUE]... [--rules FILE]
        [--upload-concurrency 4] [--cpus --gpus --ram --executor --address] [--quiet]
        [--detach]

Exit codes as ``conveyor docs``: 0 every document went through (kept or
rejected with its reasons), 1 some failed (listed with their reasons), 2 a
usage error (nothing ran), 130 interrupted (run the same command again).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from ..cli.common import (
    DETACH_HELP,
    DETACH_OPTION,
    console,
    detach_now,
    finish,
    run_or_exit,
    usage_error,
)
from ..docs.cli import corpus, print_gone, print_skipped
from ..errors import ConveyorError
from ..optional import require

EXTRA = ("ftfy", "py3langid", "rensa", "pyarrow", "fsspec")  # what `conveyor[dataset]` installs


def register(app: typer.Typer) -> None:
    """Add the ``dataset`` command to ``app``."""
    app.command("dataset")(dataset)


def dataset(
    inputs: List[str] = typer.Argument(None, help=(
        "PDFs, folders and archives, local or at an fsspec URL (s3://bucket/prefix/). "
        "None: resume the run in --run-dir.")),
    run_dir: Path = typer.Option(..., "--run-dir", help="Where the ledger and logs live."),
    out: str = typer.Option(..., "--out", help=(
        "Where the dataset goes: a folder, or an fsspec URL (s3://, gs://, hf://datasets/).")),
    fmt: str = typer.Option("parquet", "--format", help="parquet or jsonl."),
    shard_size: str = typer.Option("256MiB", "--shard-size", help="About how big a shard is."),
    languages: Optional[str] = typer.Option(None, help=(
        "Keep only these languages, e.g. en,de (default: keep all, record each).")),
    dedupe: str = typer.Option("fuzzy", help="fuzzy (near and exact duplicates), exact, none."),
    pii: str = typer.Option("redact", help="redact (e-mails, IPs, phones) or keep."),
    rule: List[str] = typer.Option([], "--rule", help=(
        "A filter threshold, NAME=VALUE (e.g. min_words=20); repeatable.")),
    rules_file: Optional[Path] = typer.Option(None, "--rules", help=(
        "A JSON file of filter thresholds ({\"min_words\": 20, ...}).")),
    upload_concurrency: int = typer.Option(4, "--upload-concurrency", min=1, help=(
        "Shards uploaded at once.")),
    cpus: Optional[float] = typer.Option(None, help="CPUs the run may use (default: detected)."),
    gpus: Optional[int] = typer.Option(None, help="GPUs the run may use (default: detected)."),
    ram: Optional[str] = typer.Option(None, help="RAM the run may use, e.g. 8GiB."),
    executor: str = typer.Option("local", help="local (worker processes), inline or ray."),
    address: Optional[str] = typer.Option(None, help="Ray cluster to join (ray only)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    detach: bool = typer.Option(False, DETACH_OPTION, help=DETACH_HELP),
) -> None:
    """Turn PDFs into a clean, filtered, deduplicated dataset at DEST; rerun to resume."""
    try:
        for module in EXTRA:
            require(module, "dataset", "conveyor dataset")
    except ConveyorError as exc:
        usage_error(str(exc))
    # The stages import the dataset extra's packages: loaded when the command runs, not
    # whenever the CLI starts.
    from .pipeline import build_dataset
    from .signals import parse_rules  # as above

    given = corpus(inputs, run_dir)
    rules: dict[str, Any] = {}
    try:
        if rules_file is not None:
            raw = json.loads(rules_file.read_text(encoding="utf-8"))
            rules.update(parse_rules([f"{k}={','.join(v) if isinstance(v, list) else v}"
                                      for k, v in raw.items()]))
        rules.update(parse_rules(rule))
        pipe = build_dataset(out, fmt=fmt, shard_size=shard_size,
                             languages=[x for x in (languages or "").split(",") if x],
                             dedupe=dedupe, pii=pii, rules=rules,
                             upload_concurrency=upload_concurrency)
    except (OSError, ValueError) as exc:
        usage_error(str(exc))
    if detach:
        detach_now(run_dir)
    result = run_or_exit(pipe, given, run_dir=run_dir, executor=executor, cpus=cpus, ram=ram,
                         gpus=gpus, address=address, progress=not quiet)

    def written() -> None:
        print_gone(result)
        print_skipped(result)
        made = dict(result.outputs("export"))
        if "export" in made:
            info = made["export"]
            console.print(f"dataset: {info['rows']} documents kept, {info['rejected']} "
                          f"rejected, in {len(info['shards'])} file(s) at {info['dest']}",
                          highlight=False, markup=False)

    with result:
        finish(result, quiet, written)
