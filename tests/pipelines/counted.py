"""A pipeline whose every execution leaves a line, for driver-kill tests.

Each stage appends "stage key pid" to ``$COUNTED_LOG`` (O_APPEND, one write
per line, so lines from several workers never mix) before it returns: a real
side effect that shows every execution, including those whose result no
ledger ever recorded. ``first`` and ``second`` fuse into one worker; ``third``
is batched, so it heads a group of its own.
"""

import os
import sys
from pathlib import Path

from conveyor import Item, Pipeline

# Drivers import this module with only tests/pipelines/ on sys.path, their workers
# with the driver's: it finds benchmarks/crashkit.py itself (appended, not put first, so
# that no benchmark module shadows another of the same name).
sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))
from crashkit import log_executions  # noqa: E402

LOG = os.environ.get("COUNTED_LOG", "/dev/null")

pipe = Pipeline("counted")


@pipe.stage
def first(x, ctx):
    log_executions(LOG, "first", [ctx.key])
    return x + 1


@pipe.stage(after=first)
def second(x, ctx):
    log_executions(LOG, "second", [ctx.key])
    return x * 2


@pipe.stage(after=second, batch_size=8)
def third(xs, ctx):
    log_executions(LOG, "third", ctx.keys)
    return [x + 3 for x in xs]


def inputs(n: int) -> list[Item]:
    return [Item(f"k{i:05d}", i) for i in range(n)]


def expected(n: int) -> dict[str, int]:
    """The last stage's outputs of a run over ``inputs(n)``."""
    return {f"k{i:05d}": (i + 1) * 2 + 3 for i in range(n)}
