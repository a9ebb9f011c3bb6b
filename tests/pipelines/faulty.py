"""A pipeline for fault-injection tests: every call is logged, so re-execution is visible.

Each stage appends "stage key pid" to $FAULT_LOG before returning; items
take a little time so that a kill lands in the middle of work. With
``FAULT_HOLD=1`` the reduce, once logged, never returns: a driver that holds
it cannot finish, so a test can kill it at any point it waits for, the reduce
in flight included.
"""

import os
import sys
import threading
import time
from pathlib import Path

from conveyor import Item, Pipeline

# Drivers import this module with only tests/pipelines/ on sys.path, their workers (local
# or Ray) with the driver's: it finds benchmarks/crashkit.py itself (appended, not put
# first, so that no benchmark module shadows another of the same name).
sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))
from crashkit import log_executions  # noqa: E402

LOG = os.environ.get("FAULT_LOG", "/dev/null")
SLEEP = float(os.environ.get("FAULT_SLEEP", "0.02"))
HOLD = os.environ.get("FAULT_HOLD") == "1"

pipe = Pipeline("faulty")


@pipe.stage(cpus=0.5)
def split(doc, ctx):
    time.sleep(SLEEP)
    log_executions(LOG, "split", [ctx.key])
    for i in range(3):
        yield {"doc": doc, "part": i}


@pipe.stage(after=split, cpus=0.5, retries=1)
def work(part, ctx):
    time.sleep(SLEEP * (1 + part["part"]))
    log_executions(LOG, "work", [ctx.key])
    return {**part, "value": len(part["doc"]) * (part["part"] + 1)}


@pipe.stage(after=work, cpus=0.5, batch_size=4)
def finish(parts, ctx):
    time.sleep(SLEEP)
    for key in ctx.keys:
        log_executions(LOG, "finish", [key])
    return [{**p, "final": p["value"] * 10} for p in parts]


@pipe.reduce(after=finish)
def total(parts):
    parts = list(parts)
    log_executions(LOG, "total", ["total"])
    if HOLD:  # until the test kills the driver, and this worker with it
        threading.Event().wait()
    return {"n": len(parts), "sum": sum(p["final"] for p in parts)}


def inputs(n: int) -> list:
    return [Item(f"doc{i:03d}", "x" * (i + 1)) for i in range(n)]
