"""PII: e-mail addresses, IP addresses and phone numbers, redacted to placeholders.

Each kind is found by a regular expression (below) and replaced by
``<EMAIL>``, ``<IP>`` or ``<PHONE>``; how many of each were replaced is kept
with the document (``pii``). Patterns are conservative: a phone number needs
at least 9 digits in a phone-like layout, an IPv4 address four octets of at
most 255, so that years, page numbers and version strings stay as they are.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

PATTERNS: dict[str, re.Pattern[str]] = {
    "email": re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b"),
    "ip": re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"
                     r"|\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b"),
    "phone": re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?"
                        r"\d{2,4}(?:[\s.-]\d{2,4}){1,4}(?!\w)"),
}
PLACEHOLDERS = {"email": "<EMAIL>", "ip": "<IP>", "phone": "<PHONE>"}


def _is_phone(match: re.Match[str]) -> bool:
    return sum(ch.isdigit() for ch in match.group()) >= 9


def redact(text: str) -> tuple[str, dict[str, int]]:
    """``text`` with PII replaced by placeholders, and the counts per kind."""
    counts = {}
    for kind, pattern in PATTERNS.items():
        n = 0

        def replace(match: re.Match[str]) -> str:
            nonlocal n
            if kind == "phone" and not _is_phone(match):
                return match.group()
            n += 1
            return PLACEHOLDERS[kind]

        text = pattern.sub(replace, text)
        counts[kind] = n
    return text, counts


def redact_document(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The document with its text redacted and the counts recorded.

    Page offsets are recomputed, so each page still starts where it says.
    """
    starts = doc["page_offsets"] + [len(doc["text"]) + 2]
    pages, counts = [], {kind: 0 for kind in PATTERNS}
    for start, end in zip(starts, starts[1:]):
        text, found = redact(doc["text"][start:end - 2])
        pages.append(text)
        for kind, n in found.items():
            counts[kind] += n
    offsets, at = [], 0
    for text in pages:
        offsets.append(at)
        at += len(text) + 2
    return {**doc, "text": "\n\n".join(pages), "page_offsets": offsets, "pii": counts}
