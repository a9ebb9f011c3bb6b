"""The ``chunk`` stage: a page set in, overlapping page-aware chunks out.

A chunk is at most :data:`MAX_CHARS` characters of whole words (a single
longer word is cut), with about
:data:`OVERLAP` characters repeated from the previous chunk so a sentence cut
at a boundary is still found. Chunks may run across pages; each records
exactly where its text comes from, as spans into the page texts::

    {"doc", "path", "source", "archive", "member", "method", "index",
     "page", "pages", "spans": [{"page", "start", "end"}], "text"}

``page_text[page][start:end]`` for each span, joined with ``"\\n"``, is the
chunk's text. ``page`` is the first page, ``pages`` every page it touches.
Children are keyed ``<page set key>/c<index>``.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

from ..items import Item

MAX_CHARS = 1000  # MiniLM reads ~256 tokens: about 1,000 characters of English
OVERLAP = 150
_WORD = re.compile(r"\S+")


def split_pages(pages: list[dict[str, Any]], max_chars: int = MAX_CHARS,
                overlap: int = OVERLAP) -> list[dict[str, Any]]:
    """Chunks of ``[{"page", "text"}]``: ``{"page", "pages", "spans", "text"}`` each."""
    if max_chars <= 0 or not 0 <= overlap < max_chars:
        raise ValueError(f"need max_chars > 0 and 0 <= overlap < max_chars, "
                         f"got {max_chars} and {overlap}")
    words = [(p["page"], m.start(), m.end()) for p in pages
             for m in _WORD.finditer(p["text"] or "")]
    texts = {p["page"]: p["text"] for p in pages}
    chunks = []
    start = 0
    while start < len(words):
        end, size = start + 1, words[start][2] - words[start][1]
        while end < len(words):
            size_with = size + _gap(words[end - 1], words[end])
            if size_with > max_chars:
                break
            size, end = size_with, end + 1
        chunks.append(_chunk(words[start:end], texts, max_chars))
        if end >= len(words):
            break
        back, kept = end - 1, words[end - 1][2] - words[end - 1][1]
        while back - 1 > start and kept + _gap(words[back - 1], words[back]) <= overlap:
            kept += _gap(words[back - 1], words[back])
            back -= 1
        start = back if kept <= overlap and back > start else end
    return chunks


def _gap(prev: tuple[int, int, int], word: tuple[int, int, int]) -> int:
    """Characters ``word`` adds after ``prev`` in a chunk's text (``"\n"`` between pages)."""
    if prev[0] == word[0]:
        return word[2] - prev[2]
    return 1 + word[2] - word[1]


def _chunk(words: list[tuple[int, int, int]], texts: dict[int, str], limit: int
           ) -> dict[str, Any]:
    spans: list[dict[str, int]] = []
    for page, s, e in words:
        if spans and spans[-1]["page"] == page:
            spans[-1]["end"] = e
        else:
            spans.append({"page": page, "start": s, "end": e})
    text = "\n".join(texts[sp["page"]][sp["start"]:sp["end"]] for sp in spans)
    if len(text) > limit and len(words) == 1:
        text = text[:limit]  # one word longer than a chunk: keep its start
        spans[0]["end"] = spans[0]["start"] + limit
    return {"page": spans[0]["page"], "pages": [sp["page"] for sp in spans], "spans": spans,
            "text": text}


def chunk(page_set: dict[str, Any], ctx: Any = None) -> Iterator[Item]:
    """The chunks of one ``extract`` or ``ocr`` output, keyed ``<key>/c<index>``."""
    key = ctx.key if ctx is not None else page_set["key"]
    for index, piece in enumerate(split_pages(page_set["pages"])):
        yield Item(f"{key}/c{index}", {
            "doc": page_set["key"], "path": page_set["path"], "source": page_set["source"],
            "archive": page_set["archive"], "member": page_set["member"],
            "method": page_set["method"], "index": index, **piece})
