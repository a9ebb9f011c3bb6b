"""Assembling a document from its page sets, and cleaning its text.

``assemble`` (a group stage, one call per document) takes the page sets that
``extract`` and ``ocr`` made of one document and puts its pages back in
order. ``clean`` repairs and normalises the text of each page, then joins the
pages, keeping where each one starts, so every span of the cleaned text can
be traced to its page:

* ftfy's repair of mojibake, then Unicode NFC;
* the text layer's soft hyphens: pdfium gives U+FFFE where a word was broken
  at a line end (and some PDFs U+00AD): the word is joined again; no kept text
  holds U+FFFE or U+FFFD (a replacement character) — those are counted, as a
  quality signal, and dropped;
* words hyphenated at a line end (``infor-`` / ``mation``) joined;
* running headers, footers and page numbers: a line that repeats on most
  pages of a document (at least :data:`REPEAT_SHARE` of three or more), or a
  line that is only a page number (``12``, ``Page 12``, ``12 of 40``), removed;
* whitespace normalised: runs of spaces and tabs become one space, lines are
  stripped, more than one blank line becomes one.
"""

from __future__ import annotations

import collections
import re
from typing import Any, Iterable

import ftfy

REPEAT_SHARE = 0.5  # a line on at least this share of the pages is a running header/footer
PAGE_SEPARATOR = "\n\n"
_SOFT_BREAK = re.compile(r"[\ufffe\u00ad]\r?\n\s*")
_HYPHEN_BREAK = re.compile(r"(\w)-\r?\n\s*(\w)")
_PAGE_NUMBER = re.compile(r"^(?:page\s+)?\d{1,5}(?:\s*(?:of|/)\s*\d{1,5})?$", re.IGNORECASE)
_SPACES = re.compile(r"[ \t\f\v\u00a0]+")
_BLANKS = re.compile(r"\n{3,}")


def assemble(key: str, page_sets: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One document from its page sets (``extract``'s text pages, ``ocr``'s pages)."""
    sets = list(page_sets)
    pages = sorted((p for s in sets for p in s["pages"]), key=lambda p: p["page"])
    methods = {s["method"] for s in sets}
    first = sets[0]
    return {"id": key, "source": first.get("source"), "path": first.get("path"),
            "archive": first.get("archive"), "member": first.get("member"),
            "sha256": first.get("sha256"),
            "method": methods.pop() if len(methods) == 1 else "mixed",
            "ocr_pages": sum(len(s["pages"]) for s in sets if s["method"] == "ocr"),
            "pages": [{"page": p["page"], "text": p["text"] or ""} for p in pages]}


def clean_page(text: str) -> tuple[str, int]:
    """A page's text repaired and normalised, and how many replacement or
    non-characters it held."""
    bad = text.count("\ufffd") + text.count("\ufffe")
    text = _SOFT_BREAK.sub("", text)  # a word broken at a line end with a soft hyphen
    text = ftfy.fix_text(text, normalization="NFC")
    text = text.replace("\ufffe", "").replace("\ufffd", "").replace("\u00ad", "")
    text = _HYPHEN_BREAK.sub(r"\1\2", text)
    text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.splitlines())
    return _BLANKS.sub("\n\n", text).strip(), bad


def running_lines(pages: list[str]) -> set[str]:
    """Lines that repeat on most pages of a document: running headers and footers."""
    if len(pages) < 3:
        return set()
    seen = collections.Counter(line for text in pages
                               for line in {ln.strip() for ln in text.splitlines()} if line)
    return {line for line, n in seen.items() if n >= REPEAT_SHARE * len(pages)}


def clean(doc: dict[str, Any]) -> dict[str, Any]:
    """The document's text, cleaned, with where each page starts in it (``page_offsets``)."""
    cleaned, bad = [], 0
    for page in doc["pages"]:
        text, n = clean_page(page["text"])
        cleaned.append(text)
        bad += n
    repeated = running_lines(cleaned)
    parts, offsets, at = [], [], 0
    for text in cleaned:
        kept = "\n".join(line for line in text.splitlines()
                         if line not in repeated and not _PAGE_NUMBER.match(line))
        offsets.append(at)
        parts.append(kept)
        at += len(kept) + len(PAGE_SEPARATOR)
    text = PAGE_SEPARATOR.join(parts)
    raw_chars = sum(len(p["text"]) for p in doc["pages"])
    out = {k: v for k, v in doc.items() if k != "pages"}
    return {**out, "text": text, "pages": len(doc["pages"]),
            "page_numbers": [p["page"] for p in doc["pages"]], "page_offsets": offsets,
            "replacement_fraction": bad / raw_chars if raw_chars else 0.0,
            "removed_lines": sorted(repeated)}
