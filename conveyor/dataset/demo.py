"""The dataset demo: ``python -m conveyor.dataset.demo [RUN_DIR]`` (the second half of ``make demo``).

It writes the sample corpus of the document demo (:mod:`conveyor.docs.corpus`)
next to the run directory, builds a dataset from it into ``RUN_DIR-out`` with
:func:`.pipeline.build_dataset` (the sample's documents are short: the rule
``min_words`` is lowered to 20), checks that the failures are exactly the
deliberately broken files and that every kept row is clean, and prints what
was kept, what was rejected and why, and the dataset card. It exits 0 when all
of that holds, 1 otherwise. Running it again reuses every finished item and
writes nothing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from ..docs.archives import input_items
from ..docs.corpus import generate_corpus
from .pipeline import build_dataset

RULES = {"min_words": 20}


def main(run_dir: str | os.PathLike[str] = "runs/dataset") -> int:
    """Run the demo in ``run_dir``; returns the exit status."""
    run_dir = Path(run_dir)
    corpus = run_dir.parent / f"{run_dir.name}-corpus"
    out = run_dir.parent / f"{run_dir.name}-out"
    print(f"1. writing the sample corpus to {corpus} ...", flush=True)
    manifest = generate_corpus(corpus)
    expected = {os.path.normpath(os.path.join(corpus, d["file"])): d["expect_failure"]
                for d in manifest["documents"] if d["expect_failure"]}

    print(f"2. building a dataset into {out} (rules {json.dumps(RULES)}) ...", flush=True)
    started = time.time()
    with build_dataset(str(out), rules=RULES).run(input_items([str(corpus)]), run_dir=run_dir,
                                                  progress=True) as result:
        print(f"   finished in {time.time() - started:.1f} s", flush=True)
        print("   " + result.summary().replace("\n", "\n   "))
        ok = True
        print("3. failures (the corpus holds two broken files on purpose):")
        for row in result.failures():
            want = expected.pop(row["key"], None)
            ok = ok and want is not None and want in row["error"]
            print(f"   {'expected  ' if want else 'UNEXPECTED'} {row['key']}: {row['error']}")
        for key, want in expected.items():
            ok = False
            print(f"   MISSING   {key} should have failed with {want!r}")

    written = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    print(f"4. {written['rows']} documents kept, {written['rejected']} rejected: "
          + ", ".join(f"{why} {n}" for why, n in written["rejected_by"].items()))
    rows = [row for shard in written["shards"] if shard["path"].startswith("data/")
            for row in pq.read_table(out / shard["path"]).to_pylist()]
    for row in rows:
        clean = not any(c in row["text"] for c in "\ufffe\ufffd")
        ok = ok and clean
        print(f"   {'kept' if clean else 'DIRTY'}  {row['source']}: {row['pages']} page(s), "
              f"{row['words']} words, {row['lang']}, {row['method']}")
    ok = ok and written["rows"] == len(rows) > 0
    print(f"5. the dataset card, {out / 'README.md'}:")
    card = (out / "README.md").read_text(encoding="utf-8").split("---\n", 2)[-1]
    print("   " + card.strip().replace("\n", "\n   "))
    print("dataset demo ok" if ok else "dataset demo FAILED: see the lines marked above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "runs/dataset"))
