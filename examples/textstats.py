"""A small text pipeline that shows the engine's parts on plain-text files.

    inspect ──when long──▶ split (fan-out: one item per paragraph) ──┐
            └─when short─▶ whole ─────────────────────────────────────┴▶ terms (batches, setup once)
                                                                          ──▶ index (reduce)

Run it with ``python examples/textstats.py RUN_DIR``: it writes a sample corpus
next to the run directory, runs the pipeline, and prints which documents each
query term finds. Run it twice: the second run reuses every finished item.
"""

from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

from conveyor import Pipeline

pipe = Pipeline("textstats")

WORD = re.compile(r"[a-z]+")
STOP = frozenset("the a an and or of to in on for with is are was were be by as at it its this that "
                 "from into their they than then over under".split())


@pipe.stage(cpus=0.5)
def inspect(path: str) -> dict:
    """Read a file and decide how to treat it."""
    text = Path(path).read_text(encoding="utf-8")
    words = len(text.split())
    return {"path": path, "text": text, "words": words, "long": words > 120}


@pipe.stage(after=inspect, when=lambda doc: doc["long"])
def split(doc: dict):
    """Long documents become one item per paragraph (keys ``path/0``, ``path/1``, ...)."""
    for paragraph in filter(None, (p.strip() for p in doc["text"].split("\n\n"))):
        yield {"path": doc["path"], "text": paragraph}


@pipe.stage(after=inspect, when=lambda doc: not doc["long"])
def whole(doc: dict) -> dict:
    """Short documents go on as one piece."""
    return {"path": doc["path"], "text": doc["text"]}


@pipe.stage(after=[split, whole], batch_size=16)
class Terms:
    """Counts content words, a batch at a time; the stop list is built once per worker."""

    def setup(self) -> None:
        self.stop = set(STOP)

    def __call__(self, pieces: list[dict]) -> list[dict]:
        out = []
        for piece in pieces:
            counts = collections.Counter(
                w for w in WORD.findall(piece["text"].lower()) if w not in self.stop and len(w) > 2)
            out.append({"path": piece["path"], "terms": dict(counts.most_common(12))})
        return out


@pipe.reduce(after=Terms, ram="256MiB")
def index(pieces) -> dict:
    """Term -> the documents that use it most."""
    by_term: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for piece in pieces:
        for term, n in piece["terms"].items():
            by_term[term][piece["path"]] += n
    return {term: [p for p, _ in docs.most_common(3)] for term, docs in by_term.items()}


TOPICS = {
    "astronomy": "telescope galaxy orbit planet comet nebula star observatory light spectrum",
    "cooking": "recipe oven flour butter simmer garlic onion sauce knead bake",
    "sailing": "harbour mast keel wind tide anchor sail hull rigging compass",
    "geology": "basalt granite sediment erosion fault magma mineral quartz strata volcano",
}


def make_corpus(folder: Path, per_topic: int = 6) -> list[str]:
    """Write a deterministic sample corpus; long documents have several paragraphs."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for t, (topic, vocab) in enumerate(sorted(TOPICS.items())):
        words = vocab.split()
        for i in range(per_topic):
            paragraphs = 1 if i % 2 == 0 else 4
            body = "\n\n".join(
                " ".join(f"the {words[(i + p + k) % len(words)]} and {words[(k * 3 + t) % len(words)]}"
                         for k in range(18))
                for p in range(paragraphs))
            path = folder / f"{topic}-{i:02d}.txt"
            path.write_text(f"{topic.title()} notes {i}\n\n{body}\n", encoding="utf-8")
            paths.append(str(path))
    return paths


def main(run_dir: str) -> int:
    corpus = make_corpus(Path(run_dir).with_name(Path(run_dir).name + "-corpus"))
    print(f"corpus: {len(corpus)} documents in {Path(corpus[0]).parent}")
    result = pipe.run(corpus, run_dir=run_dir, progress=True)
    print(result.summary())
    found = result.output("index")
    for query in ("galaxy", "garlic", "anchor", "magma"):
        docs = ", ".join(Path(p).name for p in found.get(query, []))
        print(f"  {query!r:10} -> {docs}")
    print(f"ledger and outputs: {run_dir}   (try: conveyor status {run_dir})")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "runs/demo"))
