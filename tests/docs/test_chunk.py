"""chunk: page-aware chunks whose spans point exactly at the page texts, in characters or
in tokens of the model's tokenizer."""

from __future__ import annotations

import random

import pytest

from conveyor.docs.chunk import Chunk, chunk, split_pages
from conveyor.docs.errors import ModelError
from conveyor.docs.model import load_tokenizer


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
    chunks = split_pages(pages, size=200, overlap=40)
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
    chunks = split_pages(pages, size=100, overlap=30)
    for prev, nxt in zip(chunks, chunks[1:]):
        prev_end, nxt_start = prev["spans"][-1]["end"], nxt["spans"][0]["start"]
        assert prev["spans"][0]["start"] < nxt_start < prev_end  # overlaps, moves on
        assert prev_end - nxt_start <= 30


def test_chunks_cross_pages_and_record_them():
    pages = [{"page": 3, "text": "end of page three"}, {"page": 4, "text": "start of four"}]
    (only,) = split_pages(pages, size=1000, overlap=100)
    assert only["text"] == "end of page three\nstart of four"
    assert only["pages"] == [3, 4] and only["page"] == 3


def test_empty_pages_make_no_chunks_and_bad_sizes_are_refused():
    assert split_pages([{"page": 1, "text": ""}, {"page": 2, "text": "  \n "}]) == []
    with pytest.raises(ValueError):
        split_pages([], size=100, overlap=100)


def test_chunk_stage_keys_and_fields():
    page_set = {"key": "c/a.pdf", "path": "c/a.pdf", "source": "c/a.pdf", "archive": None,
                "member": None, "sha256": "x", "method": "text",
                "pages": [{"page": 1, "text": "one two three"}]}
    (item,) = list(chunk(page_set))
    assert item.key == "c/a.pdf/c0"
    assert item.value["doc"] == "c/a.pdf" and item.value["method"] == "text"
    assert item.value["text"] == "one two three"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)  # the shipped MiniLM's


def _tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _assert_covered(chunks: list[dict], pages: list[dict]) -> None:
    covered = {(s["page"], i) for c in chunks for s in c["spans"]
               for i in range(s["start"], s["end"])}
    missing = [(p["page"], i) for p in pages for i, ch in enumerate(p["text"])
               if not ch.isspace() and (p["page"], i) not in covered]
    assert missing == []


@pytest.mark.parametrize("seed", range(3))
def test_token_chunks_fit_the_size_and_their_spans_rebuild_them(tokenizer, seed):
    pages = _pages(seed)
    pages[1]["text"] += " Zürich's «naïve» façade, 3.14159e-7 — unbelievably!! "
    chunks = split_pages(pages, size=40, overlap=8, tokenizer=tokenizer)
    assert len(chunks) > 5
    for piece in chunks:
        assert 0 < _tokens(tokenizer, piece["text"]) <= 40
        assert _rebuilt(piece, pages) == piece["text"]
        assert piece["page"] == piece["pages"][0]
    _assert_covered(chunks, pages)
    # Chunks are filled: all but the last come within a few tokens of the size.
    assert sum(_tokens(tokenizer, c["text"]) >= 36 for c in chunks[:-1]) >= len(chunks) - 3


def test_token_chunks_overlap_by_about_the_overlap(tokenizer):
    pages = [{"page": 1, "text": " ".join(f"word{i:03d}" for i in range(300))}]
    chunks = split_pages(pages, size=50, overlap=12, tokenizer=tokenizer)
    for prev, nxt in zip(chunks, chunks[1:]):
        prev_end, nxt_start = prev["spans"][-1]["end"], nxt["spans"][0]["start"]
        assert prev["spans"][0]["start"] < nxt_start < prev_end  # overlaps, moves on
        shared = _tokens(tokenizer, pages[0]["text"][nxt_start:prev_end])
        assert 12 - 3 <= shared <= 12  # whole words: up to a word's tokens short of it


def test_a_word_longer_than_a_token_chunk_is_cut_at_a_token(tokenizer):
    word = "-".join(["lighthouse"] * 60)  # one word to the chunker, 119 tokens
    pages = [{"page": 2, "text": f"before {word} after"}]
    chunks = split_pages(pages, size=30, overlap=5, tokenizer=tokenizer)
    long = [c for c in chunks if c["text"].startswith("lighthouse-")]
    assert len(long) == 1 and 0 < _tokens(tokenizer, long[0]["text"]) <= 30
    assert word.startswith(long[0]["text"]) and _rebuilt(long[0], pages) == long[0]["text"]
    assert chunks[-1]["text"].endswith("after")


def test_chunk_options_are_checked_and_default_to_what_the_model_reads(small_model):
    assert (Chunk.using().size, Chunk.using().overlap, Chunk.using().unit) == (1000, 150, "chars")
    assert (Chunk.using(200).size, Chunk.using(200).overlap) == (200, 30)
    tokens = Chunk.using(unit="tokens")
    assert (tokens.size, tokens.overlap) == (254, 38)  # MiniLM: 256 less [CLS] and [SEP]
    assert Chunk.using(unit="tokens", model=str(small_model)).size == 126  # its own 128
    errors = {
        (0, None, "chars"): "chunk size must be a positive number of chars, got 0",
        (100, 100, "chars"): "chunk overlap (100 chars) must be less than the chunk size "
                             "(100 chars)",
        (100, -1, "tokens"): "chunk overlap must be 0 or more tokens, got -1",
        (100, 10, "words"): "chunk unit must be chars or tokens, got 'words'",
        (300, 10, "tokens"): "chunk size 300 tokens is more than model "
                             "sentence-transformers/all-MiniLM-L6-v2 reads (254 tokens "
                             "besides its special tokens); give at most 254",
    }
    for (size, overlap, unit), message in errors.items():
        with pytest.raises(ValueError) as info:
            Chunk.using(size, overlap, unit)
        assert str(info.value) == message
    with pytest.raises(ModelError, match="no such model folder"):
        Chunk.using(unit="tokens", model=str(small_model / "gone"))


def test_token_chunk_stage_loads_the_tokenizer_in_setup(small_model):
    stage = Chunk.using(20, 4, "tokens", str(small_model))()
    stage.setup()
    page_set = {"key": "c/a.pdf", "path": "c/a.pdf", "source": "c/a.pdf", "archive": None,
                "member": None, "method": "text",
                "pages": [{"page": 1, "text": " ".join(["lighthouse keepers"] * 30)},
                          {"page": 2, "text": "the end"}]}

    class Ctx:
        key = "c/a.pdf"

    items = list(stage(page_set, Ctx()))
    assert [i.key for i in items] == [f"c/a.pdf/c{n}" for n in range(len(items))]
    assert all(_tokens(stage.tokenizer, i.value["text"]) <= 20 for i in items)
    assert items[-1].value["pages"] == [1, 2] and items[-1].value["doc"] == "c/a.pdf"
