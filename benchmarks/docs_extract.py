"""Text extraction pages/s: conveyor's extract stage vs pypdfium2 alone in one process.

Both read the same born-digital PDFs (all pages have a text layer). The peer
is the plain loop a user would write: open each PDF with pypdfium2 and read
every page's text, one process. conveyor runs the ``extract`` stage with the
docs pipeline's resources over one item per document, on every core; its
time includes starting the workers. Target on 2 cores: ratio >= 1.5.
"""

from __future__ import annotations

import shutil

from docs_common import parse, report, run_pipeline, timed, workdir


def main() -> None:
    args = parse(__doc__)
    docs, pages = (12, 5) if args.quick else (1000, 20)
    import random

    from conveyor import Item, Pipeline
    from conveyor.docs.corpus import page_lines, text_pdf
    from conveyor.docs.extract import extract
    from conveyor.docs.pipeline import build_pipeline
    from conveyor.resources import detect_cpus

    root = workdir(args.keep)
    rng = random.Random(7)
    template = root / "template.pdf"
    template.write_bytes(text_pdf([page_lines(topic, rng, 8, title=i == 0)
                                   for i, topic in enumerate(["jazz", "tides", "castles",
                                                              "baking"] * (pages // 4 + 1))
                                   ][:pages]))
    paths = []
    for i in range(docs):
        path = root / "in" / f"doc{i:04d}.pdf"
        path.parent.mkdir(exist_ok=True)
        shutil.copy(template, path)
        paths.append(str(path))

    def alone() -> int:
        import pypdfium2 as pdfium

        chars = 0
        for path in paths:
            doc = pdfium.PdfDocument(path)
            for page in doc:
                textpage = page.get_textpage()
                chars += len(textpage.get_text_bounded())
                textpage.close()
                page.close()
            doc.close()
        return chars

    alone()  # warm the file cache and the import for both
    _, peer_s = timed(alone)

    declared = build_pipeline(embed_gpus=0)["extract"]
    pipe = Pipeline("bench-extract")
    pipe.stage(extract, cpus=declared.resources.cpus, ram=declared.resources.ram)
    inputs = [Item(p, {"key": p, "path": p, "source": p, "archive": None, "member": None,
                       "sha256": None, "text_pages": list(range(1, pages + 1))}) for p in paths]
    ours_s = run_pipeline(pipe, inputs, root / "run")
    total = docs * pages
    peer, ours = total / peer_s, total / ours_s
    report(benchmark="docs_extract", quick=args.quick, documents=docs, pages=total,
           cpus=detect_cpus(), conveyor_pages_per_s=round(ours, 1),
           peer="pypdfium2 alone, one process", peer_pages_per_s=round(peer, 1),
           ratio=round(ours / peer, 3), target_ratio=1.5, conveyor_s=round(ours_s, 2),
           peer_s=round(peer_s, 2))


if __name__ == "__main__":
    main()
