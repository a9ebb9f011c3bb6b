"""The demo a newcomer runs first: ``python -m conveyor.docs.demo [RUN_DIR]`` (``make demo``).

It writes the sample corpus (:mod:`.corpus`) next to the run directory,
runs the document pipeline on it with live progress, checks the failures
are exactly the deliberately broken files, measures OCR against the known
text, runs one search per kind of document (typed, inside the zip, scanned,
mixed) and says where everything is. It exits 0 when all of that holds, 1
otherwise. Running it again reuses every finished item.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from .archives import input_items
from .corpus import char_error_rate, generate_corpus
from .pipeline import build_pipeline
from .search import search

DEMO_QUERIES = ("photosynthesis.pdf", "bundle.zip/ocean/tides.pdf", "scans/volcanoes-scan.pdf",
                "scans/beekeeping-mixed.pdf")


def main(run_dir: str | os.PathLike[str] = "runs/demo") -> int:
    """Run the demo in ``run_dir``; returns the exit status."""
    run_dir = Path(run_dir)
    corpus = run_dir.parent / f"{run_dir.name}-corpus"
    print(f"1. writing the sample corpus to {corpus} ...", flush=True)
    manifest = generate_corpus(corpus)
    by_source = {os.path.normpath(os.path.join(corpus, d["file"])): d
                 for d in manifest["documents"]}
    kinds = sorted({d["kind"] for d in manifest["documents"]})
    print(f"   {len(by_source)} PDFs ({', '.join(kinds)}), "
          f"{sum(len(d['pages']) for d in by_source.values())} pages", flush=True)

    pipe = build_pipeline()
    print(f"2. running the docs pipeline in {run_dir} "
          f"(embed on {'GPU' if pipe['embed'].resources.gpus else 'CPU'}) ...", flush=True)
    started = time.time()
    result = pipe.run(input_items([str(corpus)]), run_dir=run_dir, progress=True)
    print(f"   finished in {time.time() - started:.1f} s", flush=True)
    print("   " + result.summary().replace("\n", "\n   "))
    ok = True

    print("3. failures (the corpus holds two broken files on purpose):")
    failed = {row["key"]: row for row in result.failures()}
    for source, doc in by_source.items():
        expected = doc["expect_failure"]
        row = failed.pop(source, None)
        if expected and row and expected in row["error"]:
            print(f"   expected  {doc['file']}: {row['error']}")
        elif expected:
            ok = False
            print(f"   MISSING   {doc['file']} should have failed with {expected!r}")
    for key, row in failed.items():
        ok = False
        print(f"   UNEXPECTED {key} ({row['stage']}): {row['error']}")

    print("4. OCR against the known text:")
    for key, page_set in sorted(result.outputs("ocr")):
        doc = by_source.get(os.path.normpath(page_set["source"]))
        if doc is None:
            continue
        for page in page_set["pages"]:
            known = doc["pages"][page["page"] - 1]
            cer = char_error_rate(known["text"], page["text"])
            note = " (stored sideways, /Rotate 90, cropped)" if known["rotated"] else ""
            print(f"   {doc['file']} page {page['page']}{note}: "
                  f"{100 * cer:.1f}% character errors")
            ok = ok and cer <= 0.05

    print("5. searches:")
    queries = {q["file"]: q for q in manifest["queries"]}
    for file in DEMO_QUERIES:
        q = queries[file]
        hits = search(run_dir, q["query"], k=3)
        top = hits[0] if hits else None
        right = top is not None and top["source"] == os.path.normpath(
            os.path.join(corpus, file))
        ok = ok and right
        print(f"   {'ok ' if right else 'BAD'} \"{q['query']}\"")
        for hit in hits[:2]:
            _print_hit(hit)

    info = result.output("index")
    print("6. outputs:")
    print(f"   vector index  {info['index']}")
    print(f"   chunk table   {info['table']}  ({info['chunks']} chunks, Parquet)")
    print(f"   ledger, logs  {run_dir}/ledger.db, {run_dir}/logs/")
    print(f"   try:          conveyor search {run_dir} \"how are tides predicted\"")
    print(f"                 conveyor status {run_dir}; conveyor failures {run_dir}")
    result.close()
    print("demo ok" if ok else "demo FAILED: see the lines marked above")
    return 0 if ok else 1


def _print_hit(hit: dict[str, Any]) -> None:
    where = hit["path"] + (f" :: {hit['member']}" if hit["member"] else "")
    snippet = " ".join(hit["text"].split())[:90]
    print(f"       {hit['score']:.2f}  {where} p.{hit['page']} [{hit['method']}]  {snippet}...")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "runs/demo"))
