"""The ``chunk`` stage: a page set in, overlapping page-aware chunks out.

A chunk is at most ``size`` characters (default :data:`MAX_CHARS`) of whole
words (a single longer word is cut), with about ``overlap`` characters
(default :data:`OVERLAP`) repeated from the previous chunk so a sentence cut
at a boundary is still found. With ``unit="tokens"`` both count tokens of
the embedding model's own tokenizer instead, so a chunk never runs past what
the model reads (its ``max_seq_length``). Chunks may run across pages; each
records exactly where its text comes from, as spans into the page texts::

    {"doc", "path", "source", "archive", "member", "method", "index",
     "page", "pages", "spans": [{"page", "start", "end"}], "text"}

``page_text[page][start:end]`` for each span, joined with ``"\\n"``, is the
chunk's text. ``page`` is the first page, ``pages`` every page it touches.
Children are keyed ``<page set key>/c<index>``. The pipeline's stage is a
:class:`Chunk` made by :meth:`Chunk.using` with the run's options.
"""

from __future__ import annotations

import bisect
import re
from typing import Any, Iterator

from ..items import Item
from .model import load_tokenizer, model_ref, token_limit

MAX_CHARS = 1000  # MiniLM reads ~256 tokens: about 1,000 characters of English
OVERLAP = 150
UNITS = ("chars", "tokens")
_WORD = re.compile(r"\S+")

Word = tuple[int, int, int]  # (page, start, end)


def check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise ValueError(f"chunk unit must be chars or tokens, got {unit!r}")


def check_options(size: int, overlap: int, unit: str) -> None:
    """Raise ``ValueError`` naming what is wrong with a chunk size, overlap and unit."""
    check_unit(unit)
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"chunk size must be a positive number of {unit}, got {size!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"chunk overlap must be 0 or more {unit}, got {overlap!r}")
    if overlap >= size:
        raise ValueError(f"chunk overlap ({overlap} {unit}) must be less than the chunk size "
                         f"({size} {unit})")


def split_pages(pages: list[dict[str, Any]], size: int = MAX_CHARS, overlap: int = OVERLAP,
                tokenizer: Any = None) -> list[dict[str, Any]]:
    """Chunks of ``[{"page", "text"}]``: ``{"page", "pages", "spans", "text"}`` each.

    ``size`` and ``overlap`` count characters, or tokens of ``tokenizer`` (a fast
    Hugging Face tokenizer; special tokens not counted) where one is given.
    """
    check_options(size, overlap, "chars" if tokenizer is None else "tokens")
    words = [(p["page"], m.start(), m.end()) for p in pages
             for m in _WORD.finditer(p["text"] or "")]
    texts = {p["page"]: p["text"] for p in pages}
    measure = _Chars(words) if tokenizer is None else _Tokens(words, texts, tokenizer)
    chunks = []
    start = 0
    while start < len(words):
        end, used = start + 1, measure.alone(start)
        while end < len(words) and used + measure.append(end) <= size:
            used, end = used + measure.append(end), end + 1
        end = start + measure.fitting(words[start:end], texts, size)
        chunks.append(_chunk(words[start:end], texts, size, measure))
        if end >= len(words):
            break
        back, kept = end - 1, measure.alone(end - 1)
        while back - 1 > start and kept + measure.prepend(back) <= overlap:
            kept += measure.prepend(back)
            back -= 1
        start = back if kept <= overlap and back > start else end
    return chunks


class _Chars:
    """Sizes in characters of the chunk's text (``"\\n"`` between pages)."""

    def __init__(self, words: list[Word]) -> None:
        self.words = words

    def alone(self, i: int) -> int:
        return self.words[i][2] - self.words[i][1]

    def append(self, i: int) -> int:
        """What word ``i`` adds after word ``i - 1``."""
        prev, word = self.words[i - 1], self.words[i]
        return word[2] - prev[2] if prev[0] == word[0] else 1 + word[2] - word[1]

    def prepend(self, i: int) -> int:
        """What word ``i - 1`` adds before word ``i``."""
        prev, word = self.words[i - 1], self.words[i]
        return word[1] - prev[1] if prev[0] == word[0] else prev[2] - prev[1] + 1

    def fitting(self, words: list[Word], texts: dict[int, str], size: int) -> int:
        return len(words)  # the sums above are exact

    def cut(self, word: Word, texts: dict[int, str], size: int) -> int:
        """Where a word too long for a chunk is cut: the end of its first ``size`` chars."""
        return min(word[2], word[1] + size)


class _Tokens:
    """Sizes in tokens: each word's tokens, from one pass of the tokenizer over its page
    (so a word is split as it is in context), and the chunk's text counted again once
    built, since a tokenizer may join or split differently across a boundary."""

    def __init__(self, words: list[Word], texts: dict[int, str], tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.counts = [0] * len(words)
        first = 0
        for page, text in texts.items():
            ends = []
            while first + len(ends) < len(words) and words[first + len(ends)][0] == page:
                ends.append(words[first + len(ends)][2])
            if not ends:
                continue
            for s, e in self._offsets(text):
                if e > s:  # a token at s belongs to the word ending after s
                    self.counts[first + min(bisect.bisect_right(ends, s), len(ends) - 1)] += 1
            first += len(ends)

    def _offsets(self, text: str) -> list[tuple[int, int]]:
        return self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                              verbose=False)["offset_mapping"]

    def count(self, text: str) -> int:
        return len(self._offsets(text))

    def alone(self, i: int) -> int:
        return self.counts[i]

    def append(self, i: int) -> int:
        return self.counts[i]

    def prepend(self, i: int) -> int:
        return self.counts[i - 1]

    def fitting(self, words: list[Word], texts: dict[int, str], size: int) -> int:
        """How many of ``words`` fit in ``size`` tokens counted over their joined text."""
        n = len(words)
        while n > 1 and self.count(_text(_spans(words[:n]), texts)) > size:
            n -= 1
        return n

    def cut(self, word: Word, texts: dict[int, str], size: int) -> int:
        """Where a word of more than ``size`` tokens is cut: after its ``size``-th token
        (or an earlier one, where the cut piece tokenizes longer)."""
        page, start, end = word
        offsets = self._offsets(texts[page][start:end])
        if len(offsets) <= size:
            return end
        for n in range(size, 1, -1):
            cut = start + offsets[n - 1][1]
            if self.count(texts[page][start:cut]) <= size:
                return cut
        return start + offsets[0][1]


def _spans(words: list[Word]) -> list[dict[str, int]]:
    spans: list[dict[str, int]] = []
    for page, s, e in words:
        if spans and spans[-1]["page"] == page:
            spans[-1]["end"] = e
        else:
            spans.append({"page": page, "start": s, "end": e})
    return spans


def _text(spans: list[dict[str, int]], texts: dict[int, str]) -> str:
    return "\n".join(texts[sp["page"]][sp["start"]:sp["end"]] for sp in spans)


def _chunk(words: list[Word], texts: dict[int, str], size: int, measure: Any
           ) -> dict[str, Any]:
    spans = _spans(words)
    if len(words) == 1:  # one word longer than a chunk: keep its start
        spans[0]["end"] = measure.cut(words[0], texts, size)
    return {"page": spans[0]["page"], "pages": [sp["page"] for sp in spans], "spans": spans,
            "text": _text(spans, texts)}


def chunk(page_set: dict[str, Any], ctx: Any = None, size: int = MAX_CHARS,
          overlap: int = OVERLAP, tokenizer: Any = None) -> Iterator[Item]:
    """The chunks of one ``extract`` or ``ocr`` output, keyed ``<key>/c<index>``."""
    key = ctx.key if ctx is not None else page_set["key"]
    pieces = split_pages(page_set["pages"], size, overlap, tokenizer)
    for index, piece in enumerate(pieces):
        yield Item(f"{key}/c{index}", {
            "doc": page_set["key"], "path": page_set["path"], "source": page_set["source"],
            "archive": page_set["archive"], "member": page_set["member"],
            "method": page_set["method"], "index": index, **piece})


class Chunk:
    """The ``chunk`` stage: :func:`chunk` with the options :meth:`using` gives it."""

    size = MAX_CHARS
    overlap = OVERLAP
    unit = "chars"
    model: str | None = None  # whose tokenizer counts tokens (None: the shipped MiniLM)

    @classmethod
    def using(cls, size: int | None = None, overlap: int | None = None, unit: str = "chars",
              model: str | None = None) -> type["Chunk"]:
        """The stage for these options. ``size`` defaults to :data:`MAX_CHARS` characters,
        or in tokens to all the model reads; ``overlap`` to 15% of ``size``.

        Raises:
            ValueError: a size, overlap or unit that cannot work, or more tokens than
                the model reads.
            ModelError: ``model`` is not on this machine.
        """
        check_unit(unit)
        limit = None
        if unit == "tokens":
            model = model_ref(model)
            limit = token_limit(model, load_tokenizer(model))
        if size is None:
            size = MAX_CHARS if limit is None else limit
        if overlap is None and isinstance(size, int):
            overlap = size * 15 // 100
        check_options(size, overlap, unit)  # type: ignore[arg-type]
        if limit is not None and size > limit:
            raise ValueError(f"chunk size {size} tokens is more than model {model} reads "
                             f"({limit} tokens besides its special tokens); give at most "
                             f"{limit}")
        return type(cls.__name__, (cls,), {"size": size, "overlap": overlap, "unit": unit,
                                           "model": model if unit == "tokens" else None})

    def setup(self) -> None:
        self.tokenizer = load_tokenizer(self.model) if self.unit == "tokens" else None

    def __call__(self, page_set: dict[str, Any], ctx: Any) -> Iterator[Item]:
        yield from chunk(page_set, ctx, self.size, self.overlap, self.tokenizer)
