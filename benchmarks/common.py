"""Shared parts of the benchmarks: CPU burning, timing, and the one JSON line each prints.

Every benchmark prints exactly one JSON object on stdout: what ran, the figures,
the bound or peer it is compared with and the ratio, all measured in the same
process run, plus the date and the machine. ``--quick`` shrinks the sizes so
the test suite can run every benchmark and none of them rots.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def burn(seconds: float) -> None:
    """Use one core for ``seconds`` of CPU time (not wall time)."""
    end = time.thread_time() + seconds
    x = 0
    while time.thread_time() < end:
        for _ in range(200):
            x += 1


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes, for the test suite")
    p.add_argument("--executor", default="local", help="local (default), ray, inline")
    p.add_argument("--run-dir", default=None, help="where runs go (default: a temp dir)")
    return p


def machine() -> dict[str, Any]:
    return {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "platform": platform.machine(), "bytecode": bytecode()}


def bytecode() -> str:
    """"cached" when every conveyor module has up-to-date compiled bytecode, as an
    installed wheel has; else "source". Start-up figures depend on it: without it each
    process (the driver, every worker) compiles conveyor's modules, about 0.1 s here,
    and a shell with PYTHONDONTWRITEBYTECODE=1 does so at every start."""
    import conveyor

    for source in Path(conveyor.__file__).parent.rglob("*.py"):
        cached = Path(importlib.util.cache_from_source(str(source)))
        try:
            header = cached.read_bytes()[:16]
        except OSError:
            return "source"
        stat = source.stat()  # a timestamp pyc records its source's mtime and size
        if (header[:4] != importlib.util.MAGIC_NUMBER
                or int.from_bytes(header[8:12], "little") != int(stat.st_mtime) & 0xFFFFFFFF
                or int.from_bytes(header[12:16], "little") != stat.st_size & 0xFFFFFFFF):
            return "source"
    return "cached"


class RayData:
    """Ray Data as a peer, measured in the same process run as conveyor.

    ``ray.init`` happens once and is not timed (a cluster would be up). Each
    :meth:`rate` builds a dataset, materialises every row and returns rows/s;
    the first call of a workload is Ray Data *cold* (its first dataset in this
    Ray session: operators and workers start), a second call of the same
    workload is *warm*. Where Ray is not installed, :meth:`start` returns None
    and benchmarks print the peer's figures as null with a note.
    """

    def __init__(self, ray: Any) -> None:
        self.ray = ray
        self.version = ray.__version__

    @classmethod
    def start(cls, cpus: int, gpus: int = 0) -> "RayData | None":
        try:
            import ray
            import ray.data
        except ImportError:
            return None
        ray.init(num_cpus=cpus, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        return cls(ray)

    def time(self, build: Any) -> tuple[int, float]:
        """Rows of the dataset ``build()`` returns, and seconds from building it to every
        row done."""
        start = time.perf_counter()
        count = build().materialize().count()
        return count, time.perf_counter() - start

    def rate(self, build: Any) -> float:
        """Rows/s of the dataset ``build()`` returns (see :meth:`time`)."""
        count, seconds = self.time(build)
        return count / seconds

    def stop(self) -> None:
        self.ray.shutdown()


NO_RAY = "Ray Data not installed (pip install 'conveyor[ray]'): peer not measured"


def emit(bench: str, **fields: Any) -> dict[str, Any]:
    """Print the benchmark's one JSON line and return it."""
    record = {"bench": bench, **fields, "date": time.strftime("%Y-%m-%d"), "machine": machine()}
    print(json.dumps(record), flush=True)
    return record
