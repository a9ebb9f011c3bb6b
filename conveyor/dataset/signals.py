"""Quality signals, the language, and the rules that keep or reject a document.

Signals in the spirit of Gopher, C4 and FineWeb, computed on the cleaned
text, plus what only a PDF tells:

=======================  ===============================================================
``words``                words (whitespace-separated tokens)
``mean_word_length``     their mean length in characters
``symbol_ratio``         ``#`` and ellipses (``...``, ``…``) per word
``alpha_fraction``       share of words with at least one letter
``stop_words``           English stop words present (``the``, ``be``, ``to`` ...), for English
``dup_line_fraction``    share of characters in lines that occur more than once
``top_2gram_fraction``   share of characters in the most frequent word 2-gram
``garbage_fraction``     share of characters that are neither letters, digits,
                         whitespace nor common punctuation
``replacement_fraction`` U+FFFD / U+FFFE in the raw text layer, per character
``ocr_share``            share of the pages read by OCR
``lang``, ``lang_score`` the language (ISO 639-1) and its probability (py3langid)
=======================  ===============================================================

:data:`DEFAULT_RULES` decides, every rule that fails adding its reason; a
document with no reason is kept. A rule set is overridden name by name
(``conveyor dataset --rule min_words=20``, or ``--rules FILE.json``).
"""

from __future__ import annotations

import collections
import re
import unicodedata
from functools import lru_cache
from typing import Any, Mapping

#: name -> threshold. ``languages`` (a list; empty: keep every language) and
#: ``min_lang_score`` apply only when languages are chosen.
DEFAULT_RULES: dict[str, Any] = {
    "min_words": 50,
    "min_mean_word_length": 3.0,
    "max_mean_word_length": 10.0,
    "max_symbol_ratio": 0.1,
    "min_alpha_fraction": 0.8,
    "min_stop_words": 2,
    "max_dup_line_fraction": 0.3,
    "max_top_2gram_fraction": 0.2,
    "max_garbage_fraction": 0.1,
    "max_replacement_fraction": 0.01,
    "languages": [],
    "min_lang_score": 0.65,
}
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
_ALPHA = re.compile(r"[^\W\d_]")
_PUNCTUATION = set(".,;:!?'\"()[]{}-–—/%&*+=<>@$€£§°…«»„“”‘’")


@lru_cache(maxsize=1)
def language_model() -> Any:
    """py3langid's identifier, loaded once a process."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def language(text: str) -> tuple[str, float]:
    """The language of ``text`` (ISO 639-1) and its probability, by py3langid, offline."""
    lang, score = language_model().classify(text[:20_000])
    return lang, float(score)


def signals(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The quality signals of a cleaned document (see the module docstring)."""
    text = doc["text"]
    words = text.split()
    n = len(words)
    chars = len(text) or 1
    lines = [line for line in text.splitlines() if line.strip()]
    repeats = collections.Counter(lines)
    dup_chars = sum(len(line) * count for line, count in repeats.items() if count > 1)
    lowered = [w.lower().strip(".,;:!?'\"()") for w in words]
    bigrams = collections.Counter(zip(lowered, lowered[1:]))
    top = bigrams.most_common(1)
    top_chars = (len(top[0][0][0]) + len(top[0][0][1])) * top[0][1] if top and top[0][1] > 1 \
        else 0
    garbage = sum(1 for ch in text if not (ch.isalnum() or ch.isspace() or ch in _PUNCTUATION
                                           or unicodedata.category(ch).startswith("M")))
    lang, score = language(text) if words else ("und", 0.0)
    return {
        "words": n,
        "mean_word_length": sum(map(len, words)) / n if n else 0.0,
        "symbol_ratio": (text.count("#") + text.count("...") + text.count("…")) / n if n else 0.0,
        "alpha_fraction": sum(1 for w in words if _ALPHA.search(w)) / n if n else 0.0,
        "stop_words": sum(1 for w in set(lowered) if w in STOP_WORDS),
        "dup_line_fraction": dup_chars / chars,
        "top_2gram_fraction": top_chars / chars,
        "garbage_fraction": garbage / chars,
        "replacement_fraction": doc.get("replacement_fraction", 0.0),
        "ocr_share": doc.get("ocr_pages", 0) / doc["pages"] if doc.get("pages") else 0.0,
        "lang": lang,
        "lang_score": round(score, 4),
    }


def verdict(sig: Mapping[str, Any], rules: Mapping[str, Any]) -> list[str]:
    """Why a document with signals ``sig`` is rejected under ``rules`` (empty: keep it)."""
    r = {**DEFAULT_RULES, **rules}
    why = []
    if sig["words"] < r["min_words"]:
        why.append(f"words {sig['words']} < {r['min_words']}")
    if not r["min_mean_word_length"] <= sig["mean_word_length"] <= r["max_mean_word_length"]:
        why.append(f"mean word length {sig['mean_word_length']:.2f} outside "
                   f"{r['min_mean_word_length']}-{r['max_mean_word_length']}")
    for name, signal, bound in (("symbol ratio", "symbol_ratio", "max_symbol_ratio"),
                                ("duplicate lines", "dup_line_fraction", "max_dup_line_fraction"),
                                ("top 2-gram", "top_2gram_fraction", "max_top_2gram_fraction"),
                                ("garbage", "garbage_fraction", "max_garbage_fraction"),
                                ("replacement characters", "replacement_fraction",
                                 "max_replacement_fraction")):
        if sig[signal] > r[bound]:
            why.append(f"{name} {sig[signal]:.3f} > {r[bound]}")
    if sig["alpha_fraction"] < r["min_alpha_fraction"]:
        why.append(f"alphabetic words {sig['alpha_fraction']:.3f} < {r['min_alpha_fraction']}")
    if sig["lang"] == "en" and sig["stop_words"] < r["min_stop_words"]:
        why.append(f"stop words {sig['stop_words']} < {r['min_stop_words']}")
    if r["languages"]:
        if sig["lang"] not in r["languages"]:
            why.append(f"language {sig['lang']} not in {','.join(r['languages'])}")
        elif sig["lang_score"] < r["min_lang_score"]:
            why.append(f"language score {sig['lang_score']} < {r['min_lang_score']}")
    return why


def parse_rules(pairs: list[str], defaults: Mapping[str, Any] = DEFAULT_RULES
                ) -> dict[str, Any]:
    """``name=value`` overrides, each checked against the rule's name and type."""
    rules: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or name not in defaults:
            raise ValueError(f"a rule is name=value with a name among "
                             f"{', '.join(sorted(defaults))}; got {pair!r}")
        default = defaults[name]
        try:
            if isinstance(default, list):
                rules[name] = [v for v in raw.split(",") if v]
            else:
                rules[name] = type(default)(raw)
        except ValueError:
            raise ValueError(f"rule {name} needs a {type(default).__name__}, "
                             f"got {raw!r}") from None
    return rules
