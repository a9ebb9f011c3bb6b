"""OCR pages/s: conveyor's ocr stage vs rapidocr alone on one core, times the cores.

Both read the same scanned pages (150 dpi grey images with noise, no text
layer), rendered with pypdfium2 and recognised by rapidocr with one ONNX
thread. The peer is the plain loop pinned to one core (render + recognise, engine
loaded and warmed up on one page first, not timed; then at least 8 pages
timed) multiplied by the number of cores: the best a perfect parallel run
could do. conveyor runs the ``ocr`` stage with the docs
pipeline's resources (one CPU, one pinned thread per worker), one item per
page; its time includes starting the workers and loading the models.
Target: ratio >= 0.9.
"""

from __future__ import annotations

import random

from docs_common import parse, report, run_pipeline, timed, workdir


def main() -> None:
    args = parse(__doc__)
    pages = 2 if args.quick else 24
    from conveyor import Item, Pipeline
    from conveyor.docs.corpus import image_pdf, page_lines, scan_image
    from conveyor.docs.ocr import Ocr, load_engine, recognise, render_page
    from conveyor.docs.pipeline import build_pipeline
    from conveyor.resources import detect_cpus

    root = workdir(args.keep)
    rng = random.Random(11)
    topics = ["volcanoes", "beekeeping", "tides", "jazz"]
    path = root / "scans.pdf"
    path.write_bytes(image_pdf([("image", scan_image(page_lines(topics[i % 4], rng, 4, True),
                                                     rng, True)) for i in range(pages)]))
    cores = detect_cpus()

    import os

    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})  # the peer really runs on one core
    try:
        engine = load_engine(1)
        recognise(engine, render_page(str(path), pages))  # warm up: the first call is slow
        sample = 1 if args.quick else min(pages, 8)
        _, peer_s = timed(lambda: [recognise(engine, render_page(str(path), n))
                                   for n in range(1, sample + 1)])
    finally:
        os.sched_setaffinity(0, allowed)
    peer = sample / peer_s * cores

    declared = build_pipeline(embed_gpus=0)["ocr"]
    pipe = Pipeline("bench-ocr")
    pipe.stage(Ocr, name="ocr", cpus=declared.resources.cpus,
               threads=declared.resources.threads, ram=declared.resources.ram)
    inputs = [Item(f"page-{n}", {"key": "scans.pdf", "path": str(path), "source": str(path),
                                 "archive": None, "member": None, "sha256": None, "page": n})
              for n in range(1, pages + 1)]
    ours_s = run_pipeline(pipe, inputs, root / "run")
    ours = pages / ours_s
    report(benchmark="docs_ocr", quick=args.quick, pages=pages, cpus=cores,
           conveyor_pages_per_s=round(ours, 3),
           peer=f"rapidocr alone, 1 thread, x {cores:g} cores",
           peer_pages_per_s=round(peer, 3), peer_one_core_s_per_page=round(peer_s / sample, 2),
           ratio=round(ours / peer, 3), target_ratio=0.9, conveyor_s=round(ours_s, 2))


if __name__ == "__main__":
    main()
