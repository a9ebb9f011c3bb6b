"""Shared by the docs benchmarks: timing a pipeline run, printing the one JSON line."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds, to check the benchmark still runs")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return parser.parse_args()


def workdir(keep: bool) -> Path:
    path = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    if not keep:
        import atexit

        atexit.register(shutil.rmtree, path, True)
    return path


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def run_pipeline(pipe: Any, inputs: list[Any], run_dir: Path) -> float:
    """Seconds for a fresh local run of ``pipe``; raises if any item failed."""
    result, seconds = timed(lambda: pipe.run(inputs, run_dir=run_dir))
    with result:
        if not result.ok:
            raise SystemExit(f"benchmark run failed: {result.failures()[:3]}")
    return seconds


def report(benchmark: str, **fields: Any) -> None:
    """The one JSON line, in the shape every benchmark here prints (see common.emit)."""
    from common import emit

    emit(benchmark, **fields)
