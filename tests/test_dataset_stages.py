"""The dataset stages as functions: cleaning, signals and rules, PII, and deduplication
measured against brute-force Jaccard."""

from __future__ import annotations

import itertools
import random

import pytest

pytest.importorskip("rensa")

from conveyor.dataset import dedupe
from conveyor.dataset.clean import PAGE_SEPARATOR, assemble, clean, clean_page
from conveyor.dataset.pii import redact, redact_document
from conveyor.dataset.signals import DEFAULT_RULES, language, parse_rules, signals, verdict
from conveyor.docs.topics import TOPICS


def prose(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    sentences = [s for t in TOPICS.values() for s in t["sentences"]]  # type: ignore[union-attr]
    words: list[str] = []
    while len(words) < n_words:
        words.extend(rng.choice(sentences).split())
    return " ".join(words[:n_words])


def test_clean_joins_broken_words_and_drops_non_characters():
    text, bad = clean_page("An infor\ufffe\nmation system\nre-\ncovers the knowl\u00ad\nedge "
                           "of \ufffdall   words\n\n\n\nhere")
    assert text == "An information system\nrecovers the knowledge of all words\n\nhere"
    assert bad == 2 and "\ufffe" not in text and "\ufffd" not in text
    assert clean_page("Mojibake: cafÃ©")[0] == "Mojibake: café"


def test_clean_removes_running_headers_footers_and_page_numbers_and_keeps_page_offsets():
    pages = [{"page": n, "text": f"Annual Report 2025\nBody of page {n} says {w}.\n{n}"}
             for n, w in ((1, "alpha"), (2, "beta"), (3, "gamma"))]
    doc = clean(assemble("doc", [{"key": "doc", "source": "s", "method": "text",
                                  "pages": pages}]))
    assert doc["text"] == PAGE_SEPARATOR.join(f"Body of page {n} says {w}."
                                              for n, w in ((1, "alpha"), (2, "beta"),
                                                           (3, "gamma")))
    assert doc["removed_lines"] == ["Annual Report 2025"]
    for offset, word in zip(doc["page_offsets"], ("alpha", "beta", "gamma")):
        assert doc["text"][offset:].startswith("Body of page") and word in \
            doc["text"][offset:offset + 30]
    assert doc["pages"] == 3 and doc["page_numbers"] == [1, 2, 3]


def test_assemble_orders_pages_from_both_readers_and_names_the_method():
    doc = assemble("d", [{"key": "d", "source": "x", "method": "ocr",
                          "pages": [{"page": 2, "text": "two"}]},
                         {"key": "d", "source": "x", "method": "text",
                          "pages": [{"page": 3, "text": "three"}, {"page": 1, "text": "one"}]}])
    assert [p["page"] for p in doc["pages"]] == [1, 2, 3]
    assert doc["method"] == "mixed" and doc["ocr_pages"] == 1


def test_signals_and_the_rules():
    good = {"text": prose(300, 1), "pages": 2, "ocr_pages": 1, "replacement_fraction": 0.0}
    sig = signals(good)
    assert sig["lang"] == "en" and sig["lang_score"] > 0.9 and sig["words"] == 300
    assert sig["ocr_share"] == 0.5 and verdict(sig, {}) == []
    junk = signals({"text": "#### $$$ ||| ~~~ " * 40, "pages": 1})
    reasons = verdict(junk, {})
    assert any(r.startswith("alphabetic words") for r in reasons)
    assert any(r.startswith("garbage") for r in reasons)
    assert verdict(signals({"text": "too short", "pages": 1}), {})[0] == "words 2 < 50"
    german = signals({"text": "Die Katze sitzt auf der Matte und schläft den ganzen Tag, "
                              "während draußen der Regen fällt. " * 10, "pages": 1})
    assert german["lang"] == "de"
    assert verdict(german, {"languages": ["en"]}) == ["language de not in en"]
    assert language("Le chat dort sur le tapis pendant que la pluie tombe.")[0] == "fr"


def test_rules_parse_by_name_and_type():
    assert parse_rules(["min_words=20", "languages=en,de", "max_symbol_ratio=0.2"]) == {
        "min_words": 20, "languages": ["en", "de"], "max_symbol_ratio": 0.2}
    with pytest.raises(ValueError, match="a rule is name=value with a name among"):
        parse_rules(["nonsense=1"])
    with pytest.raises(ValueError, match="rule min_words needs a int, got 'many'"):
        parse_rules(["min_words=many"])
    assert set(DEFAULT_RULES) >= {"min_words", "languages", "max_garbage_fraction"}


def test_pii_is_redacted_and_counted_and_dates_and_numbers_stay():
    text, counts = redact("Mail ann.lee+x@example.co.uk or call +44 20 7946 0958 / "
                          "(030) 1234 5678; host 192.168.10.255 served 2025 pages, "
                          "version 1.2.3, page 12 of 40.")
    assert text == ("Mail <EMAIL> or call <PHONE> / <PHONE>; host <IP> served 2025 pages, "
                    "version 1.2.3, page 12 of 40.")
    assert counts == {"email": 1, "ip": 1, "phone": 2}
    doc = redact_document({"text": "a@b.io\n\nsecond page", "page_offsets": [0, 8]})
    assert doc["text"] == "<EMAIL>\n\nsecond page" and doc["page_offsets"] == [0, 9]


def near_copy(words: list[str], changed: int, rng: random.Random) -> list[str]:
    copy = list(words)
    for i in rng.sample(range(len(copy)), changed):
        copy[i] = f"x{rng.randrange(10**6)}"
    return copy


def jaccard(a: list[str], b: list[str]) -> float:
    sa = {" ".join(a[i:i + 5]) for i in range(len(a) - 4)}
    sb = {" ".join(b[i:i + 5]) for i in range(len(b) - 4)}
    return len(sa & sb) / len(sa | sb)


def test_near_duplicates_found_against_brute_force_jaccard():
    """60 originals, each with copies at a spread of similarities: every pair at or above
    0.8 (brute force, word 5-grams) is found, and every pair found is at least 0.7."""
    rng = random.Random(3)
    docs: dict[str, list[str]] = {}
    for n in range(60):
        base = prose(400, 100 + n).split()
        rng.shuffle(base)  # distinct documents share few 5-grams
        docs[f"d{n:02d}"] = base
        for c, changed in enumerate((0, 2, 6, 15, 40)):
            docs[f"d{n:02d}c{c}"] = near_copy(base, changed, rng)
    fps = {}
    for key, words in docs.items():
        sig = {"alpha_fraction": 1.0, "garbage_fraction": 0.0, "dup_line_fraction": 0.0,
               "words": len(words)}
        fps[key] = dedupe.fingerprint({"id": key, "text": " ".join(words), "signals": sig})
    candidates = []
    for exact in (True, False):
        keyed = (((fp["exact"], fp) for fp in fps.values()) if exact else
                 ((b.value["bucket"], b.value) for fp in fps.values() for b in dedupe.bands(fp)))
        for _, group in itertools.groupby(sorted(keyed, key=lambda kv: kv[0]),
                                          key=lambda kv: kv[0]):
            candidates.extend(dedupe.members((v for _, v in group), exact=exact))
    duplicate_of = dedupe.clusters(candidates, fps)
    cluster = {k: duplicate_of.get(k, k) for k in docs}
    truth = [(a, b, jaccard(docs[a], docs[b])) for a, b in itertools.combinations(docs, 2)
             if a[:3] == b[:3]]
    should = [(a, b) for a, b, j in truth if j >= 0.8]
    found = [(a, b, j) for a, b, j in truth if cluster[a] == cluster[b]]
    recall = sum(cluster[a] == cluster[b] for a, b in should) / len(should)
    assert recall >= 0.97, recall
    assert all(j >= 0.7 for _, _, j in found), min(j for _, _, j in found)
    assert not any(cluster[a] == cluster[b] for a, b in itertools.combinations(docs, 2)
                   if a[:3] != b[:3])
    # survivors: the best quality, then most words, then the smallest id
    assert cluster["d00c0"] == "d00" and duplicate_of["d00c0"] == "d00"
