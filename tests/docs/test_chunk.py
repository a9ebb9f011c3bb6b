"""chunk: page-aware chunks whose spans point exactly at the page texts."""

from __future__ import annotations

import random

import pytest

from conveyor.docs.chunk import chunk, split_pages


def _pages(seed: int) -> list[dict]:
    rng = random.Random(seed)
    words = ["alpha", "be", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    pages = []
    for number in range(1, 5):
        text = "".join(rng.choice(words) + rng.choice([" ", "  ", "\n", ", "])
                       for _ in range(rng.randrange(0, 220)))
        pages.append({"page": number, "text": text})
    return pages


def _rebuilt(piece: dict, pages: list[dict]) -> str:
    texts = {p["page"]: p["text"] for p in pages}
    return "\n".join(texts[s["page"]][s["start"]:s["end"]] for s in piece["spans"])


@pytest.mark.parametrize("seed", range(5))
def test_spans_rebuild_each_chunk_and_every_word_is_covered(seed):
    pages = _pages(seed)
    chunks = split_pages(pages, max_chars=200, overlap=40)
    for piece in chunks:
        assert len(piece["text"]) <= 200
        assert _rebuilt(piece, pages) == piece["text"]
        assert piece["page"] == piece["pages"][0]
        assert piece["pages"] == sorted(set(piece["pages"]))
    covered = {(s["page"], i) for c in chunks for s in c["spans"]
               for i in range(s["start"], s["end"])}
    for p in pages:
        for i, ch in enumerate(p["text"]):
            if not ch.isspace():
                assert (p["page"], i) in covered, (p["page"], i)


def test_consecutive_chunks_overlap_and_advance():
    pages = [{"page": 1, "text": " ".join(f"word{i:03d}" for i in range(300))}]
    chunks = split_pages(pages, max_chars=100, overlap=30)
    for prev, nxt in zip(chunks, chunks[1:]):
        prev_end, nxt_start = prev["spans"][-1]["end"], nxt["spans"][0]["start"]
        assert prev["spans"][0]["start"] < nxt_start < prev_end  # overlaps, moves on
        assert prev_end - nxt_start <= 30


def test_chunks_cross_pages_and_record_them():
    pages = [{"page": 3, "text": "end of page three"}, {"page": 4, "text": "start of four"}]
    (only,) = split_pages(pages, max_chars=1000, overlap=100)
    assert only["text"] == "end of page three\nstart of four"
    assert only["pages"] == [3, 4] and only["page"] == 3


def test_empty_pages_make_no_chunks_and_bad_sizes_are_refused():
    assert split_pages([{"page": 1, "text": ""}, {"page": 2, "text": "  \n "}]) == []
    with pytest.raises(ValueError):
        split_pages([], max_chars=100, overlap=100)


def test_chunk_stage_keys_and_fields():
    page_set = {"key": "c/a.pdf", "path": "c/a.pdf", "source": "c/a.pdf", "archive": None,
                "member": None, "sha256": "x", "method": "text",
                "pages": [{"page": 1, "text": "one two three"}]}
    (item,) = list(chunk(page_set))
    assert item.key == "c/a.pdf/c0"
    assert item.value["doc"] == "c/a.pdf" and item.value["method"] == "text"
    assert item.value["text"] == "one two three"
