"""The ``extract`` stage: the text layer of the pages that have one, with pypdfium2.

Its output, like ``ocr``'s, is a *page set*: the document's identity and a
list of ``{"page", "text"}``; ``chunk`` takes either kind the same way.
Only the visible part of each page (its CropBox) is read.
"""

from __future__ import annotations

from typing import Any

from .pdf import open_pdf, page_text

SOURCE_FIELDS = ("key", "path", "source", "archive", "member", "sha256")


def page_set(profile: dict[str, Any], method: str, pages: list[dict[str, Any]]) -> dict[str, Any]:
    """The output shared by ``extract`` and ``ocr``: identity, method and page texts."""
    return {**{f: profile.get(f) for f in SOURCE_FIELDS}, "method": method, "pages": pages}


def extract_pages(path: str, pages: list[int]) -> list[dict[str, Any]]:
    """``[{"page", "text"}]`` for the given 1-based pages of the PDF at ``path``."""
    doc = open_pdf(path)
    try:
        return [{"page": n, "text": page_text(doc[n - 1])} for n in pages]
    finally:
        doc.close()


def extract(profile: dict[str, Any]) -> dict[str, Any]:
    """Text of every page in ``profile["text_pages"]`` (an ``inspect`` output)."""
    return page_set(profile, "text", extract_pages(profile["path"], profile["text_pages"]))
