"""A pipeline whose every execution leaves a line, for driver-kill tests.

Each stage appends "stage key pid" to ``$COUNTED_LOG`` (O_APPEND, one write
per line, so lines from several workers never mix) before it returns: a real
side effect that shows every execution, including those whose result no
ledger ever recorded. ``first`` and ``second`` fuse into one worker; ``third``
is batched, so it heads a group of its own.
"""

import os

from conveyor import Item, Pipeline

LOG = os.environ.get("COUNTED_LOG", "/dev/null")

pipe = Pipeline("counted")


def log(stage: str, keys: list[str]) -> None:
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, "".join(f"{stage} {key} {os.getpid()}\n" for key in keys).encode())
    finally:
        os.close(fd)


@pipe.stage
def first(x, ctx):
    log("first", [ctx.key])
    return x + 1


@pipe.stage(after=first)
def second(x, ctx):
    log("second", [ctx.key])
    return x * 2


@pipe.stage(after=second, batch_size=8)
def third(xs, ctx):
    log("third", ctx.keys)
    return [x + 3 for x in xs]


def inputs(n: int) -> list[Item]:
    return [Item(f"k{i:05d}", i) for i in range(n)]


def expected(n: int) -> dict[str, int]:
    """The last stage's outputs of a run over ``inputs(n)``."""
    return {f"k{i:05d}": (i + 1) * 2 + 3 for i in range(n)}
