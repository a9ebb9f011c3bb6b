"""The ``inspect`` stage: what a PDF is, page by page, before any expensive work.

A page *needs OCR* when it has (almost) no text layer but images cover a good
part of what a reader sees: a scan. A page with a text layer is extracted; a
page with neither (blank) needs nothing. The decision is made per page from
the file's content, never from its name, so a mixed document (typed pages
plus a scanned annex) sends only its scanned pages to OCR.

The profile is a plain dict, so ``when=`` predicates downstream route on it::

    {"key", "path", "source", "archive", "member", "sha256", "bytes", "pages",
     "encrypted", "scanned", "pages_needing_ocr", "text_pages", "page_info"}

Page numbers are 1-based everywhere in the document pipeline.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from .errors import ArchiveError
from .pdf import is_encrypted, open_pdf, page_text, visible_box

MIN_TEXT_CHARS = 16  # fewer non-space characters than this is "no text layer"
MIN_IMAGE_COVERAGE = 0.25  # images over at least this share of the visible page: a scan


def describe_source(value: Any, key: str | None = None) -> dict[str, Any]:
    """Normalise an input (a path string, or a dict from ``expand``) to its source fields."""
    if isinstance(value, str):
        return {"key": key or value, "path": value, "source": value, "archive": None,
                "member": None}
    if isinstance(value, dict) and "path" in value:
        return {"key": key or value.get("key") or value["path"], "path": value["path"],
                "source": value.get("source", value["path"]),
                "archive": value.get("archive"), "member": value.get("member")}
    raise TypeError(f"expected a path or a dict with 'path', got {type(value).__name__}")


def sha256_of(path: str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def image_coverage(page: Any) -> float:
    """Share (0..1) of the visible page covered by image objects (overlaps may over-count)."""
    import pypdfium2.raw as raw

    left, bottom, right, top = visible_box(page)
    area = (right - left) * (top - bottom)
    if area <= 0:
        return 0.0
    covered = 0.0
    for obj in page.get_objects(filter=(raw.FPDF_PAGEOBJ_IMAGE,), max_depth=4):
        ol, ob, orr, ot = obj.get_bounds()
        w = min(orr, right) - max(ol, left)
        h = min(ot, top) - max(ob, bottom)
        if w > 0 and h > 0:
            covered += w * h
    return min(1.0, covered / area)


def profile_page(page: Any, number: int) -> dict[str, Any]:
    """What one page holds: text characters, image coverage, boxes, rotation, and the verdict."""
    text = page_text(page)
    chars = sum(not c.isspace() for c in text)
    coverage = image_coverage(page)
    has_text = chars >= MIN_TEXT_CHARS
    return {
        "page": number,
        "chars": chars,
        "image_coverage": round(coverage, 4),
        "rotation": page.get_rotation(),
        "mediabox": [round(v, 2) for v in page.get_mediabox()],
        "cropbox": [round(v, 2) for v in page.get_cropbox()],
        "needs_ocr": (not has_text) and coverage >= MIN_IMAGE_COVERAGE,
        "has_text": has_text,
    }


def inspect(value: Any, ctx: Any = None) -> dict[str, Any]:
    """Profile one PDF (a path, or an ``expand`` output); raises ``BadDocument`` with a reason.

    ``scanned`` is true when every page with content needs OCR;
    ``pages_needing_ocr`` and ``text_pages`` list the pages each branch takes.
    """
    if isinstance(value, dict) and value.get("error"):  # an archive expand could not open
        raise ArchiveError(value["error"])
    src = describe_source(value, ctx.key if ctx is not None else None)
    doc = open_pdf(src["path"])
    try:
        pages = [profile_page(doc[i], i + 1) for i in range(len(doc))]
        encrypted = is_encrypted(doc)
    finally:
        doc.close()
    ocr_pages = [p["page"] for p in pages if p["needs_ocr"]]
    text_pages = [p["page"] for p in pages if p["has_text"]]
    return {
        **src,
        "sha256": sha256_of(src["path"]),
        "bytes": os.path.getsize(src["path"]),
        "pages": len(pages),
        "encrypted": encrypted,
        "scanned": bool(ocr_pages) and not text_pages,
        "pages_needing_ocr": ocr_pages,
        "text_pages": text_pages,
        "page_info": pages,
    }


def has_text_pages(profile: dict[str, Any]) -> bool:
    """Route predicate: the document has pages to extract."""
    return bool(profile["text_pages"])


def has_ocr_pages(profile: dict[str, Any]) -> bool:
    """Route predicate: the document has pages to OCR."""
    return bool(profile["pages_needing_ocr"])
