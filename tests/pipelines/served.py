"""A pipeline for the serving tests: typed CPU stage, a batch stage on a declared GPU, a branch.

    prep ──when 2+ words──▶ model (gpus=1, batches of 8) ──┐
         └─when one word──▶ short ──────────────────────────┴▶ post

``model`` records its batch size and the GPU it was given; ``sleep`` and
``fail`` in a request make it slow or raise, for timeouts and errors.

Where ``$SERVED_DIR`` is set, each ``model`` call appends ``start IDS`` and
``end IDS`` lines to ``$SERVED_DIR/calls.log``, and a call holding a request
with ``hold: NAME`` waits until the file ``$SERVED_DIR/NAME`` exists: tests
keep requests in the stage for as long as they need, with no sleeps.
"""

from __future__ import annotations

import os
import time

from pydantic import BaseModel, Field

from conveyor import Pipeline

pipe = Pipeline("served")


class Query(BaseModel):
    text: str = Field(min_length=1, max_length=1000)
    id: int = 0
    sleep: float = Field(0.0, ge=0, le=3)
    fail: bool = False
    hold: str = Field("", max_length=64, pattern=r"^[A-Za-z0-9_-]*$")


class Tagged(BaseModel):
    id: int
    text: str
    words: int
    sleep: float
    fail: bool
    hold: str = ""
    path: str = ""
    batch: int = 0
    device: str | None = None


@pipe.stage(cpus=0.5, min_workers=1)
def prep(query: Query) -> Tagged:
    return Tagged(id=query.id, text=query.text.strip(), words=len(query.text.split()),
                  sleep=query.sleep, fail=query.fail, hold=query.hold)


@pipe.stage(after=prep, when=lambda t: t.words >= 2, cpus=0.5, gpus=1, batch_size=8,
            batch_wait=0.05, min_workers=1)
def model(batch: list[Tagged]) -> list[Tagged]:
    ids = ",".join(str(t.id) for t in batch)
    _log(f"start {ids}")
    try:
        _wait_for({t.hold for t in batch if t.hold})
        time.sleep(max(t.sleep for t in batch) + 0.02)  # the "device" time of one batch
        for t in batch:
            if t.fail:
                raise RuntimeError(f"model cannot read {t.text!r}")
    finally:
        _log(f"end {ids}")
    device = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [t.model_copy(update={"path": "model", "batch": len(batch), "device": device})
            for t in batch]


def _log(line: str) -> None:
    """Append ``line`` to ``$SERVED_DIR/calls.log`` at once (O_APPEND), where it is set."""
    if "SERVED_DIR" in os.environ:
        fd = os.open(os.path.join(os.environ["SERVED_DIR"], "calls.log"),
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


def _wait_for(gates: set[str]) -> None:
    """Hold the call until a file named after each gate exists in ``$SERVED_DIR``."""
    if gates:
        folder = os.environ["SERVED_DIR"]  # a request asks to be held only where it is set
        while not all(os.path.exists(os.path.join(folder, gate)) for gate in gates):
            time.sleep(0.01)


@pipe.stage(after=prep, when=lambda t: t.words < 2, cpus=0.25)
def short(tagged: Tagged) -> Tagged:
    return tagged.model_copy(update={"path": "short"})


@pipe.stage(after=[model, short], cpus=0.25)
def post(tagged: Tagged) -> dict:
    return {"id": tagged.id, "path": tagged.path, "batch": tagged.batch,
            "device": tagged.device, "upper": tagged.text.upper()}
