"""dedupe: near-duplicate detection against datatrove's MinHash pipeline, same corpus, same run.

A generated corpus of ``N`` documents of 300 words from a 20,000-word
vocabulary: a third are unique, the rest come in families of a base document
and copies of it with a share of words replaced (0 to 12%, so their Jaccard
similarity of word 5-gram shingles to the base spreads from 1 to about 0.5).
The truth is brute force: every pair's Jaccard over the same shingles (a
sparse matrix product), a pair is a duplicate at ``>= 0.8``.

* conveyor: :func:`conveyor.dataset.pipeline.dedupe_stages` (fingerprint ->
  exact group, bands -> buckets group -> clusters reduce, candidate pairs
  verified on the whole signature) from the documents to ``{duplicate:
  survivor}``, on ``--cpus`` cores;
* datatrove: ``MinhashDedupSignature -> Buckets -> Cluster -> Filter`` (its
  four-stage MinHash pipeline, ``LocalPipelineExecutor``, the documents in two
  JSONL files per core, a task per file, as many workers as cores) to every
  document's cluster id, with the same parameters (5-grams, 20 bands x 8 rows;
  its own text normalisation and spaCy word splitting, its 64-bit hashes).

Both are warmed up on a small corpus first, then timed once each. Quality is
per pair: a predicted pair is two documents in one predicted cluster;
precision and recall against the brute-force pairs.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import itertools
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from common import emit, parser

from conveyor import Item, Pipeline
from conveyor.dataset import dedupe as dd
from conveyor.dataset.pipeline import dedupe_stages

WORDS, VOCABULARY = 300, 20_000
SIGNALS = {"alpha_fraction": 1.0, "garbage_fraction": 0.0, "dup_line_fraction": 0.0,
           "words": WORDS}


def corpus(n: int, seed: int = 3) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    vocabulary = [f"w{rng.randrange(10**9):x}" for _ in range(VOCABULARY)]

    def text() -> list[str]:
        return [rng.choice(vocabulary) for _ in range(WORDS)]

    docs: list[list[str]] = []
    while len(docs) < n:
        base = text()
        docs.append(base)
        if rng.random() < 0.33:
            continue  # a unique document
        for _ in range(rng.randint(1, 4)):
            copy = list(base)
            for i in rng.sample(range(WORDS), int(WORDS * rng.choice(
                    [0, 0, 0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.12]))):
                copy[i] = rng.choice(vocabulary)
            docs.append(copy)
    order = list(range(n))
    rng.shuffle(order)  # families are not neighbours
    return [{"id": f"d{i:06d}", "text": " ".join(docs[j]) + ".", "signals": SIGNALS}
            for i, j in enumerate(order)]


def true_pairs(docs: list[dict[str, Any]], threshold: float = dd.THRESHOLD
               ) -> set[tuple[str, str]]:
    """Every pair with Jaccard >= threshold over word 5-gram shingles: brute force."""
    import numpy as np
    import scipy.sparse as sp

    index: dict[str, int] = {}
    rows, cols = [], []
    for r, doc in enumerate(docs):
        words = dd.normalised_words(doc["text"])
        for s in {" ".join(words[i:i + dd.SHINGLE]) for i in range(len(words) - dd.SHINGLE + 1)}:
            rows.append(r)
            cols.append(index.setdefault(s, len(index)))
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)),
                      shape=(len(docs), len(index)))
    inter = (m @ m.T).tocoo()
    sizes = np.asarray(m.sum(axis=1)).ravel()
    keep = (inter.row < inter.col)
    r, c, i = inter.row[keep], inter.col[keep], inter.data[keep]
    jaccard = i / (sizes[r] + sizes[c] - i)
    return {(docs[a]["id"], docs[b]["id"]) for a, b in zip(r[jaccard >= threshold],
                                                          c[jaccard >= threshold])}


def pairs_of(clusters: list[list[str]]) -> set[tuple[str, str]]:
    return {tuple(sorted(p)) for c in clusters for p in itertools.combinations(c, 2)}


def quality(found: set[tuple[str, str]], truth: set[tuple[str, str]]) -> dict[str, float]:
    hit = len(found & truth)
    return {"precision": round(hit / len(found), 4) if found else 1.0,
            "recall": round(hit / len(truth), 4) if truth else 1.0}


def conveyor_clusters(docs: list[dict[str, Any]], run_dir: Path, cpus: int,
                      executor: str) -> tuple[list[list[str]], float]:
    pipe = Pipeline("dedupe-bench")

    @pipe.stage(cpus=0.25)
    def document(doc):
        return doc

    dedupe_stages(pipe, document)
    start = time.perf_counter()
    result = pipe.run([Item(d["id"], d) for d in docs], run_dir=run_dir, cpus=cpus,
                      executor=executor, progress=False)
    seconds = time.perf_counter() - start
    assert result.ok, result.failures()
    by_survivor: dict[str, list[str]] = {}
    for dup, survivor in result.output("clusters").items():
        by_survivor.setdefault(survivor, [survivor]).append(dup)
    return list(by_survivor.values()), seconds


def datatrove_clusters(docs: list[dict[str, Any]], work: Path, cpus: int
                       ) -> tuple[list[list[str]], float]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    # datatrove parallelises by input file: one file per task, two tasks per core.
    files = 2 * cpus
    (work / "input").mkdir(parents=True)
    for f in range(files):
        with open(work / "input" / f"docs-{f}.jsonl", "w") as fh:
            for doc in docs[f::files]:
                fh.write(json.dumps({"id": doc["id"], "text": doc["text"]}) + "\n")
    config = MinhashConfig(n_grams=dd.SHINGLE, num_buckets=dd.BANDS,
                           hashes_per_bucket=dd.ROWS, hash_config=HashConfig(precision=64))

    def reader() -> Any:
        return JsonlReader(str(work / "input"))

    def run(steps: list[Any], tasks: int) -> None:
        LocalPipelineExecutor(pipeline=steps, tasks=tasks, workers=min(tasks, cpus),
                              logging_dir=str(work / f"logs-{time.perf_counter_ns()}"),
                              skip_completed=False).run()

    start = time.perf_counter()
    # The signature and filter stages run a task per input file, the bucket stage one per band.
    run([reader(), MinhashDedupSignature(str(work / "sigs"), config=config)], files)
    run([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=config)],
        dd.BANDS)
    run([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=config,
                             save_cluster_id=True)], 1)
    run([reader(), MinhashDedupFilter(str(work / "remove"), load_cluster_ids=True,
                                      exclusion_writer=JsonlWriter(str(work / "removed"))),
         JsonlWriter(str(work / "kept"))], files)
    seconds = time.perf_counter() - start
    clusters: dict[int, list[str]] = {}
    for folder in ("kept", "removed"):
        for path in (work / folder).glob("*.jsonl*"):
            with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as fh:
                for line in fh:
                    doc = json.loads(line)
                    cid = doc["metadata"].get("minhash_cluster_id", -1)
                    if cid != -1:
                        clusters.setdefault(cid, []).append(doc["id"])
    return list(clusters.values()), seconds


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=None)
    p.add_argument("--cpus", type=int, default=2)
    args = p.parse_args()
    n = args.docs or (300 if args.quick else 5000)
    docs, warm = corpus(n), corpus(100, seed=9)
    truth = true_pairs(docs)
    try:
        peer_version: str | None = importlib.metadata.version("datatrove")
    except importlib.metadata.PackageNotFoundError:
        peer_version = None
    with tempfile.TemporaryDirectory(dir=args.run_dir) as tmp:
        root = Path(tmp)
        conveyor_clusters(warm, root / "warm", args.cpus, args.executor)
        ours, ours_s = conveyor_clusters(docs, root / "run", args.cpus, args.executor)
        peer: dict[str, Any] = {"datatrove_docs_per_s": None, "datatrove": None, "ratio": None,
                                "note": "datatrove not installed (pip install 'conveyor[bench]'"
                                        "): peer not measured"}
        if peer_version is not None:
            datatrove_clusters(warm, root / "dt-warm", args.cpus)
            theirs, theirs_s = datatrove_clusters(docs, root / "dt", args.cpus)
            peer = {"datatrove_docs_per_s": round(n / theirs_s, 1),
                    "datatrove": quality(pairs_of(theirs), truth),
                    "ratio": round(theirs_s / ours_s, 3),  # our docs/s over theirs
                    "datatrove_version": peer_version}
    emit("dedupe", docs=n, cpus=args.cpus, executor=args.executor, true_pairs=len(truth),
         docs_per_s=round(n / ours_s, 1), conveyor=quality(pairs_of(ours), truth),
         **peer, threshold=dd.THRESHOLD, bands=dd.BANDS, rows=dd.ROWS)


if __name__ == "__main__":
    main()
