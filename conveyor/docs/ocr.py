"""OCR of scanned pages: render with pypdfium2, recognise with rapidocr-onnxruntime.

Two stages: ``ocr_pages`` fans a profiled document out into one item per page
that needs OCR (keys ``<doc>/page-<n>``), and ``ocr`` recognises one page.
Per-page items let several workers share one long scan, make a retry or a
timeout cost one page rather than the document, and let a resumed run skip
the pages already read.

Rendering goes through PDFium's page renderer, which applies the page's
``/Rotate`` and clips to its CropBox, exactly as a viewer shows the page. Taking
the embedded image instead (what the production run this replaces did) reads
sideways text on rotated scans and text a publisher had cropped away.

rapidocr's ONNX sessions are created once per worker (``Ocr.setup``) with
``intra_op_num_threads`` set to the worker's pinned thread count
(``CONVEYOR_THREADS``): one thread per worker and one worker per core is the
most pages per second for this model on CPU. The page is rendered in
``Ocr.load``, which the worker's prefetch thread runs ahead of the calls: the
next page's PDF is opened and rendered while the recogniser reads this one.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from ..items import Item
from .extract import page_set
from .pdf import open_pdf

DPI = 150  # scans are usually 150-300 dpi; 150 reads 10 pt text reliably and is fast
SAME_LINE = 0.5  # boxes overlapping this share of the smaller height sit on one line


def ocr_pages(profile: dict[str, Any], ctx: Any = None) -> Iterator[Item]:
    """One item per page that needs OCR, keyed ``<doc key>/page-<n>``."""
    key = ctx.key if ctx is not None else profile["key"]
    for number in profile["pages_needing_ocr"]:
        yield Item(f"{key}/page-{number}", {**profile, "page": number, "page_info": None})


def render_page(path: str, number: int, dpi: int = DPI) -> Any:
    """The page as a viewer shows it (``/Rotate`` applied, CropBox clipped): a BGR array."""
    doc = open_pdf(path)
    try:
        page = doc[number - 1]
        bitmap = page.render(scale=dpi / 72)  # PDFium applies /Rotate and the CropBox
        return bitmap.to_numpy().copy()
    finally:
        doc.close()


def lines_from_boxes(result: list[Any] | None) -> str:
    """rapidocr's ``[box, text, score]`` list as text: boxes grouped into lines, top to bottom."""
    if not result:
        return ""
    boxes = []
    for box, text, _score in result:
        ys = [p[1] for p in box]
        xs = [p[0] for p in box]
        boxes.append((min(ys), max(ys), min(xs), text.strip()))
    boxes.sort()
    lines: list[list[tuple[float, float, float, str]]] = []
    for top, bottom, left, text in boxes:
        if lines:
            line_top = min(b[0] for b in lines[-1])
            line_bottom = max(b[1] for b in lines[-1])
            overlap = min(bottom, line_bottom) - max(top, line_top)
            if overlap > SAME_LINE * min(bottom - top, line_bottom - line_top):
                lines[-1].append((top, bottom, left, text))
                continue
        lines.append([(top, bottom, left, text)])
    return "\n".join(" ".join(b[3] for b in sorted(line, key=lambda b: b[2]) if b[3])
                     for line in lines).strip()


def load_engine(threads: int | None = None) -> Any:
    """A rapidocr engine with its bundled models, its ONNX threads pinned to ``threads``."""
    import cv2
    from rapidocr_onnxruntime import RapidOCR

    threads = threads or int(os.environ.get("CONVEYOR_THREADS", "1"))
    cv2.setNumThreads(threads)  # OpenCV's own pool ignores OMP_NUM_THREADS
    return RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1)


def recognise(engine: Any, image: Any) -> str:
    """Text of a rendered page image.

    rapidocr's 0°/180° line classifier is off: pages arrive upright (PDFium
    applied ``/Rotate``), and on noisy scans the classifier flips good lines,
    which then fall under the recognition score and vanish (measured on the
    sample scans: 20-48% character errors with it, 0% without).
    """
    result, _elapsed = engine(image, use_cls=False)
    return lines_from_boxes(result)


class Ocr:
    """The ``ocr`` stage: one page in (an ``ocr_pages`` item), its page set out."""

    def setup(self) -> None:
        self.engine = load_engine()

    def load(self, item: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """The item with its rendered page (run ahead of the calls)."""
        return item, render_page(item["path"], item["page"])

    def __call__(self, page: tuple[dict[str, Any], Any]) -> dict[str, Any]:
        item, image = page
        text = recognise(self.engine, image)
        return page_set(item, "ocr", [{"page": item["page"], "text": text}])
