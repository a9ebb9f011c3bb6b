"""A pipeline whose items keyed ``held...`` wait for a gate: the file ``$GATE_DIR/open``.

Tests of detached runs use it to stop or kill a driver at a known point (some
items done, the held ones in flight) without sleeping. Every call appends
"stage key pid" to ``$GATE_DIR/calls.log``, so re-execution is visible.
"""

import os
import time
from pathlib import Path

from conveyor import Pipeline

GATE = Path(os.environ.get("GATE_DIR", "/nonexistent"))

pipe = Pipeline("gated")


def log(stage: str, key: str) -> None:
    fd = os.open(GATE / "calls.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{stage} {key} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


@pipe.stage(cpus=0.5)
def first(word, ctx):
    log("first", ctx.key)
    return word.upper()


@pipe.stage(after=first, cpus=0.5)
def gate(word, ctx):
    log("gate", ctx.key)
    while ctx.key.startswith("held") and not (GATE / "open").exists():
        time.sleep(0.05)
    return f"{word}!"
