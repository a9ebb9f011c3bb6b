"""A pipeline for the serving tests: typed CPU stage, a batch stage on a declared GPU, a branch.

    prep ──when 2+ words──▶ model (gpus=1, batches of 8) ──┐
         └─when one word──▶ short ──────────────────────────┴▶ post

``model`` records its batch size and the GPU it was given; ``sleep`` and
``fail`` in a request make it slow or raise, for timeouts and errors.
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


class Tagged(BaseModel):
    id: int
    text: str
    words: int
    sleep: float
    fail: bool
    path: str = ""
    batch: int = 0
    device: str | None = None


@pipe.stage(cpus=0.5, min_workers=1)
def prep(query: Query) -> Tagged:
    return Tagged(id=query.id, text=query.text.strip(), words=len(query.text.split()),
                  sleep=query.sleep, fail=query.fail)


@pipe.stage(after=prep, when=lambda t: t.words >= 2, cpus=0.5, gpus=1, batch_size=8,
            batch_wait=0.05, min_workers=1)
def model(batch: list[Tagged]) -> list[Tagged]:
    time.sleep(max(t.sleep for t in batch) + 0.02)  # the "device" time of one batch
    for t in batch:
        if t.fail:
            raise RuntimeError(f"model cannot read {t.text!r}")
    device = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [t.model_copy(update={"path": "model", "batch": len(batch), "device": device})
            for t in batch]


@pipe.stage(after=prep, when=lambda t: t.words < 2, cpus=0.25)
def short(tagged: Tagged) -> Tagged:
    return tagged.model_copy(update={"path": "short"})


@pipe.stage(after=[model, short], cpus=0.25)
def post(tagged: Tagged) -> dict:
    return {"id": tagged.id, "path": tagged.path, "batch": tagged.batch,
            "device": tagged.device, "upper": tagged.text.upper()}
