"""dataset: ``conveyor dataset`` end to end, documents/s through every stage and where the time goes.

Two corpora, each built from scratch into a local folder:

* ``demo``: the sample corpus of ``make demo`` (born-digital and scanned PDFs,
  a zip, an encrypted and a truncated file: OCR dominates);
* ``generated``: ``--docs`` text PDFs of 2 to 4 pages of English prose, a
  third of them exact or near copies of another (a few words changed), a few
  in German, a few tiny.

For each: documents in, seconds from start to the manifest written, documents/s,
and per stage its busy worker-seconds and share of the total (from the run's
report, ``conveyor report --json``), the stages sorted by busy time. There is no
peer: no other tool reads PDFs into a deduplicated dataset on CPU (datatrove
and NeMo Curator start from extracted text); ``benchmarks/dedupe.py`` compares
the part they share.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path
from typing import Any

from common import emit, parser

from conveyor.dataset.pipeline import build_dataset
from conveyor.docs.archives import input_items
from conveyor.docs.corpus import generate_corpus, text_pdf
from conveyor.docs.topics import TOPICS
from conveyor.observe.report import analyse

GERMAN = ("Die Bienen sammeln im Sommer den Nektar der Blüten und bringen ihn in den Stock, "
          "wo er zu Honig wird. Der Imker öffnet die Kästen nur an warmen Tagen. ")


def generated(folder: Path, n: int, seed: int = 11) -> None:
    rng = random.Random(seed)
    sentences = [s for t in TOPICS.values() for s in t["sentences"]]  # type: ignore[union-attr]

    def words(count: int) -> list[str]:
        out: list[str] = []
        while len(out) < count:
            out.extend(rng.choice(sentences).split())
        return out[:count]

    def write(ws: list[str], name: str) -> None:
        lines = [" ".join(ws[i:i + 12]) for i in range(0, len(ws), 12)]
        (folder / name).write_bytes(text_pdf([lines[i:i + 35] for i in range(0, len(lines), 35)],
                                             first_title=False))

    folder.mkdir(parents=True)
    made: list[list[str]] = []
    for i in range(n):
        roll = rng.random()
        if made and roll < 0.33:  # a copy of an earlier one, maybe with a few words changed
            copy = list(rng.choice(made))
            for j in rng.sample(range(len(copy)), rng.choice([0, 2, 5])):
                copy[j] = rng.choice(sentences).split()[0]
            write(copy, f"doc-{i:05d}.pdf")
        elif roll < 0.36:
            write((GERMAN * 6).split(), f"doc-{i:05d}.pdf")
        elif roll < 0.39:
            write(words(6), f"doc-{i:05d}.pdf")
        else:
            ws = words(rng.randint(700, 1400))
            made.append(ws)
            write(ws, f"doc-{i:05d}.pdf")


def build(corpus: Path, root: Path, name: str, cpus: float | None, executor: str
          ) -> dict[str, Any]:
    run_dir, out = root / f"{name}-run", root / f"{name}-out"
    files = sum(1 for p in corpus.rglob("*") if p.is_file())
    start = time.perf_counter()
    with build_dataset(str(out)).run(input_items([str(corpus)]), run_dir=run_dir, cpus=cpus,
                                     executor=executor) as result:
        seconds = time.perf_counter() - start
        counts = result.counts
        failed = len(result.failures())
        export = result.output("export")
    report = analyse(run_dir)
    total = sum(s.busy for s in report.stages) or 1.0
    stages = sorted(({"stage": s.name, "busy_s": round(s.busy, 2),
                      "share": round(s.busy / total, 3)} for s in report.stages),
                    key=lambda s: -s["busy_s"])
    documents = counts.get("inspect", {}).get("done", 0) + counts.get("inspect", {}).get(
        "failed", 0)
    return {"corpus": name, "files": files, "documents": documents, "kept": export["rows"],
            "rejected": export["rejected"], "failed": failed, "seconds": round(seconds, 2),
            "docs_per_s": round(documents / seconds, 2), "stages": stages}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=None)
    p.add_argument("--cpus", type=float, default=None)
    args = p.parse_args()
    n = args.docs or (24 if args.quick else 300)
    with tempfile.TemporaryDirectory(dir=args.run_dir) as tmp:
        root = Path(tmp)
        generate_corpus(root / "demo-corpus")
        generated(root / "generated-corpus", n)
        for name in ("demo", "generated"):
            emit("dataset", executor=args.executor,
                 **build(root / f"{name}-corpus", root, name, args.cpus, args.executor))


if __name__ == "__main__":
    main()
