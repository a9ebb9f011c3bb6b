"""docs_expand: a folder of archives, each archive its own item, against the old single-item walk.

A folder of ``--archives`` zips of 10 PDFs each. Two pipelines over it, in the
same process run, each from the folder to every document's ``inspect``:

* per archive (today's ``conveyor.docs``): ``expand`` lists the folder, one item
  per file, and ``unpack`` extracts each archive as an item of its own
  (parallel, each failing or retrying alone);
* single item (the old way): one ``walk`` item extracts every archive of the
  folder in turn (``expand_to(folder, out)``) and fans the PDFs out.

Both warmed up on a small folder first. Figures: documents/s to inspected, and
the ratio per-archive over single-item.
"""

from __future__ import annotations

import io
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

from common import emit, parser

from conveyor import Item, Pipeline
from conveyor.docs.archives import (
    expand,
    expand_to,
    input_items,
    is_archive,
    is_document,
    unpack,
)
from conveyor.docs.corpus import text_pdf
from conveyor.docs.profile import inspect

PER_ARCHIVE = 10


def folder_of_archives(folder: Path, archives: int) -> None:
    folder.mkdir(parents=True)
    for a in range(archives):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for d in range(PER_ARCHIVE):
                lines = [f"Archive {a} document {d} line {i}: the tide comes in twice a day."
                         for i in range(40)]
                zf.writestr(f"doc-{d:02d}.pdf", text_pdf([lines[:20], lines[20:]]))
        (folder / f"bundle-{a:03d}.zip").write_bytes(buf.getvalue())


def per_archive() -> Pipeline:
    pipe = Pipeline("expand-per-archive")
    pipe.stage(expand, cpus=0.25)
    pipe.stage(unpack, after=expand, when=is_archive, cpus=0.5)
    pipe.stage(inspect, after=[expand, unpack], when=is_document, cpus=0.5)
    return pipe


def single_item() -> Pipeline:
    pipe = Pipeline("expand-single-item")

    def walk(source: dict[str, Any], ctx: Any) -> Iterator[Item]:
        yield from expand_to(source["path"], ctx.output_dir)

    pipe.stage(walk, cpus=0.25)
    pipe.stage(inspect, after=walk, cpus=0.5)
    return pipe


def rate(pipe: Pipeline, folder: Path, run_dir: Path, cpus: float, executor: str
         ) -> tuple[float, int]:
    start = time.perf_counter()
    result = pipe.run(input_items([str(folder)]), run_dir=run_dir, cpus=cpus, executor=executor)
    seconds = time.perf_counter() - start
    with result:
        assert result.ok, result.failures()
        docs = result.counts["inspect"]["done"]
    return docs / seconds, docs


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--archives", type=int, default=None)
    p.add_argument("--cpus", type=float, default=2)
    args = p.parse_args()
    archives = args.archives or (4 if args.quick else 40)
    with tempfile.TemporaryDirectory(dir=args.run_dir) as tmp:
        root = Path(tmp)
        folder_of_archives(root / "warm", 2)
        folder_of_archives(root / "corpus", archives)
        figures = {}
        for name, build in (("per_archive", per_archive), ("single_item", single_item)):
            rate(build(), root / "warm", root / f"{name}-warm", args.cpus, args.executor)
            figures[name], docs = rate(build(), root / "corpus", root / name, args.cpus,
                                       args.executor)
            assert docs == archives * PER_ARCHIVE, docs
    emit("docs_expand", executor=args.executor, archives=archives,
         documents=archives * PER_ARCHIVE,
         per_archive_docs_per_s=round(figures["per_archive"], 1),
         single_item_docs_per_s=round(figures["single_item"], 1),
         ratio=round(figures["per_archive"] / figures["single_item"], 3))


if __name__ == "__main__":
    main()
