"""A sample corpus with known text: what the demo runs on and what the tests compare against.

:func:`generate_corpus` writes, deterministically from a seed:

- born-digital PDFs, one per topic, several pages each (reportlab text);
- scans: pages rendered to 150 dpi grey images with noise and specks, stored
  in image-only PDFs (no text layer), one of whose pages is stored sideways
  with ``/Rotate 90`` and has a CropBox that hides a calibration strip the
  scanner left in the margin — read right, that page shows only its text;
- a mixed document: a typed page followed by a scanned page;
- ``bundle.zip`` holding some of the born-digital PDFs (they are not also
  loose, so their hits can only come through the archive);
- ``encrypted.pdf`` (a user password is required) and ``truncated.pdf``
  (a complete PDF cut short), which must fail with those reasons.

Its manifest (returned, and written to ``manifest.json`` beside the files,
which ``expand`` ignores) records for every document its file (``bundle.zip/
tides.pdf`` for a member), topic, kind, the expected failure if any, and the
exact text of every page, line by line as drawn, so extraction and OCR are
compared against what was put on the page rather than against themselves.
It also lists a search query per topic with the file that must come first.

Needs reportlab (``pip install 'conveyor[docs]'``).
"""

from __future__ import annotations

import io
import json
import os
import random
import zipfile
from pathlib import Path
from typing import Any

from .topics import TOPICS

PAGE = (595.28, 841.89)  # A4 in points
MARGIN = 64
TITLE_FONT, TITLE_SIZE = "Helvetica-Bold", 16
BODY_FONT, BODY_SIZE, LEADING = "Helvetica", 12, 21
SCAN_DPI = 150
STRAY_TEXT = "SCANNER CALIBRATION STRIP 0042 NOT PART OF THE DOCUMENT"
MANIFEST = "manifest.json"

# The layout: (file, topic, kind, pages). Kinds: text, scan, mixed, encrypted, truncated.
LAYOUT: list[tuple[str, str, str, int]] = [
    ("photosynthesis.pdf", "photosynthesis", "text", 3),
    ("jazz.pdf", "jazz", "text", 3),
    ("reports/baking.pdf", "baking", "text", 2),
    ("bundle.zip/compilers.pdf", "compilers", "text", 3),
    ("bundle.zip/ocean/tides.pdf", "tides", "text", 2),
    ("scans/volcanoes-scan.pdf", "volcanoes", "scan", 2),
    ("scans/beekeeping-mixed.pdf", "beekeeping", "mixed", 2),
    ("encrypted.pdf", "castles", "encrypted", 1),
    ("truncated.pdf", "castles", "truncated", 2),
]
ROTATED = ("scans/volcanoes-scan.pdf", 2)  # the page stored sideways and cropped


def page_lines(topic: str, rng: random.Random, count: int, title: bool) -> list[str]:
    """The lines drawn on one page: the title (on a first page), then ``count`` sentences."""
    from reportlab.lib.utils import simpleSplit

    sentences = list(TOPICS[topic]["sentences"])  # type: ignore[arg-type]
    rng.shuffle(sentences)
    lines = [str(TOPICS[topic]["title"])] if title else []
    width = PAGE[0] - 2 * MARGIN
    for sentence in sentences[:count]:
        lines.extend(simpleSplit(sentence, BODY_FONT, BODY_SIZE, width))
    return lines


def _draw_lines(canvas: Any, lines: list[str], title: bool) -> None:
    y = PAGE[1] - MARGIN
    for i, line in enumerate(lines):
        if i == 0 and title:
            canvas.setFont(TITLE_FONT, TITLE_SIZE)
        else:
            canvas.setFont(BODY_FONT, BODY_SIZE)
        canvas.drawString(MARGIN, y, line)
        y -= LEADING * (1.4 if i == 0 and title else 1)


def text_pdf(pages: list[list[str]], first_title: bool = True, encrypt: str | None = None,
             stray: str | None = None) -> bytes:
    """A born-digital PDF with ``pages`` of lines; ``stray`` is drawn in the bottom margin."""
    from reportlab.pdfgen import canvas as rl_canvas

    buf = io.BytesIO()
    canvas = rl_canvas.Canvas(buf, pagesize=PAGE, invariant=1, encrypt=encrypt)
    for number, lines in enumerate(pages):
        _draw_lines(canvas, lines, title=first_title and number == 0)
        if stray:
            canvas.setFont(BODY_FONT, BODY_SIZE)
            canvas.drawString(MARGIN, 28, stray)
        canvas.showPage()
    canvas.save()
    return buf.getvalue()


def scan_image(lines: list[str], rng: random.Random, title: bool, stray: str | None = None
               ) -> Any:
    """A grey 150 dpi "scan" of a page: rendered text plus sensor noise and dust specks."""
    import numpy as np
    import pypdfium2 as pdfium
    from PIL import Image

    doc = pdfium.PdfDocument(text_pdf([lines], first_title=title, stray=stray))
    try:
        grey = doc[0].render(scale=SCAN_DPI / 72, grayscale=True).to_pil().convert("L")
    finally:
        doc.close()
    noise = np.random.default_rng(rng.randrange(2**32))
    pixels = np.asarray(grey, dtype=np.float32)
    pixels = pixels * 0.9 + 12 + noise.normal(0, 14, pixels.shape)  # paper tone and noise
    specks = noise.random(pixels.shape) < 0.0015
    pixels[specks] = noise.uniform(0, 90, int(specks.sum()))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")


def image_pdf(pages: list[tuple[str, Any]]) -> bytes:
    """A PDF whose pages are ``("image", PIL image)`` (no text layer) or ``("text", lines)``."""
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas as rl_canvas

    buf = io.BytesIO()
    canvas = rl_canvas.Canvas(buf, pagesize=PAGE, invariant=1)
    for number, (kind, content) in enumerate(pages):
        if kind == "text":
            _draw_lines(canvas, content, title=number == 0)
        else:
            width = content.width * 72 / SCAN_DPI
            height = content.height * 72 / SCAN_DPI
            canvas.setPageSize((width, height))
            jpeg = io.BytesIO()
            content.save(jpeg, format="JPEG", quality=88)
            jpeg.seek(0)
            canvas.drawImage(ImageReader(jpeg), 0, 0, width=width, height=height)
        canvas.showPage()
        canvas.setPageSize(PAGE)
    canvas.save()
    return buf.getvalue()


def rotate_and_crop(data: bytes, number: int) -> bytes:
    """Store page ``number`` sideways with ``/Rotate 90`` and crop its calibration strip.

    The page's image is turned a quarter counter-clockwise and the page made
    landscape, so only a reader that applies ``/Rotate`` (90° clockwise) sees
    it upright. The strip drawn at the bottom of the upright page then lies
    along the right edge of the stored page, and the CropBox cuts it off.
    """
    import pypdfium2 as pdfium
    from PIL import Image

    doc = pdfium.PdfDocument(data)
    upright = doc[number - 1].render(scale=SCAN_DPI / 72, grayscale=True).to_pil().convert("L")
    doc.close()
    sideways: Image.Image = upright.rotate(90, expand=True)  # counter-clockwise
    doc = pdfium.PdfDocument(image_pdf_pages(data, number, sideways))
    page = doc[number - 1]
    width, height = page.get_size()  # landscape now
    page.set_rotation(90)
    # The upright page's bottom 60 pt (the strip) is the stored page's right 60 pt.
    page.set_cropbox(10, 10, width - 60, height - 10)
    out = io.BytesIO()
    doc.save(out)
    doc.close()
    return _fixed_id(out.getvalue())


def _fixed_id(data: bytes) -> bytes:
    """PDFium writes a random second file ID on save; make it the first, so output is seeded."""
    import re

    return re.sub(rb"/ID\s*\[\s*<([0-9A-Fa-f]+)>\s*<[0-9A-Fa-f]+>\s*\]",
                  lambda m: b"/ID[<" + m.group(1) + b"><" + m.group(1) + b">]", data)


def image_pdf_pages(data: bytes, number: int, image: Any) -> bytes:
    """``data`` with page ``number`` replaced by a page holding only ``image``."""
    import pypdfium2 as pdfium

    replacement = pdfium.PdfDocument(image_pdf([("image", image)]))
    doc = pdfium.PdfDocument(data)
    doc.del_page(number - 1)
    doc.import_pages(replacement, pages=[0], index=number - 1)
    out = io.BytesIO()
    doc.save(out)
    doc.close()
    replacement.close()
    return out.getvalue()


def generate_corpus(dest: str | os.PathLike[str], seed: int = 0) -> dict[str, Any]:
    """Write the sample corpus under ``dest`` and return its manifest (see the module docstring)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    documents = []
    zipped: dict[str, bytes] = {}
    for file, topic, kind, count in LAYOUT:
        pages = [page_lines(topic, rng, 4 if kind in ("scan", "mixed") else 6, title=i == 0)
                 for i in range(count)]
        failure = None
        page_kinds = ["text"] * count
        if kind == "text":
            data = text_pdf(pages)
        elif kind == "encrypted":
            data = text_pdf(pages, encrypt="conveyor-demo")
            failure = "encrypted: password required"
        elif kind == "truncated":
            whole = text_pdf(pages)
            data = whole[: len(whole) * 3 // 5]
            failure = "truncated"
        elif kind == "scan":
            stray = [STRAY_TEXT if (file, i + 1) == ROTATED else None for i in range(count)]
            data = image_pdf([("image", scan_image(lines, rng, i == 0, stray[i]))
                              for i, lines in enumerate(pages)])
            page_kinds = ["scan"] * count
        else:  # mixed: a typed page, then a scanned one
            data = image_pdf([("text", pages[0])] +
                             [("image", scan_image(lines, rng, False)) for lines in pages[1:]])
            page_kinds = ["text"] + ["scan"] * (count - 1)
        if file == ROTATED[0]:
            data = rotate_and_crop(data, ROTATED[1])
        if "/" in file and file.split("/")[0].endswith(".zip"):
            zipped[file.split("/", 1)[1]] = data
        else:
            _write_if_changed(dest / file, data)
        documents.append({
            "file": file, "topic": topic, "kind": kind, "expect_failure": failure,
            "pages": [{"page": i + 1, "kind": page_kinds[i], "text": "\n".join(lines),
                       "rotated": (file, i + 1) == ROTATED}
                      for i, lines in enumerate(pages)],
        })
    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in sorted(zipped.items()):
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    _write_if_changed(dest / "bundle.zip", bundle.getvalue())
    queries = [{"query": TOPICS[d["topic"]]["query"], "topic": d["topic"], "file": d["file"]}
               for d in documents if not d["expect_failure"]]
    manifest = {"seed": seed, "stray_text": STRAY_TEXT, "documents": documents,
                "queries": queries}
    _write_if_changed(dest / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def _write_if_changed(path: Path, data: bytes) -> None:
    """Write ``data`` unless the file already holds it (a rerun then reuses finished work)."""
    if path.exists() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def load_manifest(dest: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest :func:`generate_corpus` wrote under ``dest``."""
    return json.loads((Path(dest) / MANIFEST).read_text())


def normalise(text: str) -> str:
    """Whitespace runs to one space, ends stripped: how texts are compared."""
    return " ".join(text.split())


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions), O(len(a)·len(b))."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def char_error_rate(reference: str, hypothesis: str) -> float:
    """Edit distance over reference length, after :func:`normalise` of both."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(ref, hyp) / len(ref)
