"""The dataset pipeline, wired: :func:`build_dataset`.

::

    expand, unpack, skipped,
    inspect ─┬─ extract ──────────────────┬─▶ assemble ─▶ clean ─▶ signals ─▶ pii ───────────┐
             ├─ ocr_pages ─▶ ocr ─────────┘   (group by                                     │
             └─ no_text ─▶ export              document)                                   │
        ┌──────────────────────────────────────────────────────────────────────────────────┘
        ├─▶ decide (side: clusters) ─▶ export (reduce: shards, manifest, card at DEST)
        └─▶ fingerprint (kept only) ─┬─▶ exact (group by hash) ───────────┐
                                     └─▶ bands ─▶ buckets (group) ────────┴─▶ clusters (reduce)

The front half is the document pipeline's (:mod:`conveyor.docs`,
:func:`~conveyor.docs.pipeline.add_reading_stages`): the same stages, the
same resources, files that are not documents recorded by ``skipped``. Every
document's verdict (its signals, the rules it failed, the document it
duplicates) is a row of the ``decide`` stage in the ledger, and a row of the export's ``rejected/`` files when it is dropped.
With ``dedupe="exact"`` the band stages are left out, with ``"none"`` every
dedupe stage; ``pii="keep"`` keeps the text as it is (counts still recorded).
"""

from __future__ import annotations

import shutil
from typing import Any, Iterator

from ..docs.pipeline import VERSION as DOCS_VERSION
from ..docs.pipeline import add_reading_stages
from ..docs.profile import has_ocr_pages, has_text_pages
from ..pipeline import Pipeline
from ..resources import parse_size
from . import dedupe as dd
from .clean import assemble, clean
from .export import export
from .pii import redact, redact_document
from .signals import DEFAULT_RULES, language_model, signals, verdict

VERSION = "1"  # bump when helper code a stage calls changes what it computes
DEDUPE = ("fuzzy", "exact", "none")


def build_dataset(dest: str, *, fmt: str = "parquet", shard_size: str | int = "256MiB",
                  languages: list[str] | None = None, dedupe: str = "fuzzy",
                  pii: str = "redact", rules: dict[str, Any] | None = None,
                  upload_concurrency: int = 4, name: str = "dataset") -> Pipeline:
    """The dataset pipeline writing to ``dest`` (a folder or an fsspec URL).

    Raises:
        ValueError: an option that cannot work (a format, a dedupe mode, a rule).
    """
    if fmt not in ("parquet", "jsonl"):
        raise ValueError(f"format must be parquet or jsonl, got {fmt!r}")
    if dedupe not in DEDUPE:
        raise ValueError(f"dedupe must be one of {', '.join(DEDUPE)}, got {dedupe!r}")
    if pii not in ("redact", "keep"):
        raise ValueError(f"pii must be redact or keep, got {pii!r}")
    unknown = set(rules or {}) - set(DEFAULT_RULES)
    if unknown:
        raise ValueError(f"unknown rule(s) {', '.join(sorted(unknown))}; rules are "
                         f"{', '.join(sorted(DEFAULT_RULES))}")
    shard_bytes = parse_size(shard_size)
    chosen = {**DEFAULT_RULES, **(rules or {}), "languages": list(languages or [])}
    parameters = {"name": name, "format": fmt, "shard_size": shard_bytes, "dedupe": dedupe,
                  "pii": pii, "rules": chosen}
    pipe = Pipeline(name).built_by(build_dataset, dest=dest, fmt=fmt, shard_size=shard_bytes,
                                   languages=list(languages or []), dedupe=dedupe, pii=pii,
                                   rules=dict(rules or {}),
                                   upload_concurrency=upload_concurrency, name=name)
    v = f"{DOCS_VERSION}+{VERSION}"
    add_reading_stages(pipe, v)

    def textless(profile: dict[str, Any]) -> bool:
        return not has_text_pages(profile) and not has_ocr_pages(profile)

    def no_text(profile: dict[str, Any]) -> dict[str, Any]:
        return {"id": profile["key"], "source": profile.get("source"), "keep": False,
                "reasons": ["no text: no page has a text layer or needs OCR"],
                "duplicate_of": None}

    pipe.stage(no_text, after="inspect", when=textless, cpus=0.25, ram="256MiB", version=v)

    def document(page_set: dict[str, Any]) -> str:
        return page_set["key"]

    pipe.group(assemble, after=["extract", "ocr"], by=document, partitions=8, cpus=0.5,
               ram="512MiB", version=v)
    pipe.stage(clean, after=assemble, cpus=0.5, ram="512MiB", version=v)

    class Judge:
        def setup(self) -> None:  # the language model loads once a worker (about 1 s)
            language_model()

        def __call__(self, doc: dict[str, Any]) -> dict[str, Any]:
            sig = signals(doc)
            return {**doc, "signals": sig, "reasons": verdict(sig, chosen)}

    pipe.stage(Judge, name="signals", after=clean, cpus=0.5, ram="512MiB", version=v)

    def scrub(doc: dict[str, Any]) -> dict[str, Any]:
        if pii == "redact":
            return redact_document(doc)
        return {**doc, "pii": redact(doc["text"])[1]}  # counted, left as it is

    pipe.stage(scrub, name="pii", after="signals", cpus=0.25, ram="256MiB", version=v)
    def kept(doc: dict[str, Any]) -> bool:
        return not doc["reasons"]

    sides = ([dedupe_stages(pipe, "pii", fuzzy=dedupe == "fuzzy", when=kept, version=v)]
             if dedupe != "none" else [])

    def decide(doc: dict[str, Any], ctx: Any) -> dict[str, Any]:
        reasons = list(doc["reasons"])
        survivor = ctx.side("clusters").get(doc["id"]) if sides and not reasons else None
        if survivor is not None:
            reasons.append(f"duplicate of {survivor}")
        return {**doc, "keep": not reasons, "reasons": reasons, "duplicate_of": survivor}

    pipe.stage(decide, after="pii", side=sides, cpus=0.25, ram="256MiB", version=v)

    def publish(rows: Iterator[dict[str, Any]], ctx: Any) -> dict[str, Any]:
        staging = ctx.output_dir
        shutil.rmtree(staging, ignore_errors=True)  # what a failed attempt left
        manifest = export(rows, dest, staging, fmt=fmt, shard_bytes=shard_bytes,
                          concurrency=upload_concurrency, parameters=parameters)
        return {"dest": dest, "rows": manifest["rows"], "rejected": manifest["rejected"],
                "shards": [s["path"] for s in manifest["shards"]]}

    pipe.reduce(publish, name="export", after=[decide, no_text], cpus=1, ram="1GiB", retries=1,
                retry_backoff=5, version=v)
    return pipe


def dedupe_stages(pipe: Pipeline, after: Any, *, fuzzy: bool = True, when: Any = None,
                  version: str = VERSION) -> str:
    """Add the dedupe stages (:mod:`.dedupe`) to ``pipe`` below ``after``, whose outputs are
    documents ``{"id", "text", "signals"}`` (``when`` picks those to compare); return the
    name of the stage whose one value is ``{duplicate id: survivor id}``, for a
    ``side=`` of the stage that decides."""
    pipe.stage(dd.fingerprint, after=after, when=when, cpus=0.5, ram="512MiB", version=version)

    pipe.group(dd.same_text, name="exact", after=dd.fingerprint, by=dd.exact_key,
               partitions=4, cpus=0.5, ram="512MiB", version=version)
    candidates = ["exact"]
    if fuzzy:
        pipe.stage(dd.bands, after=dd.fingerprint, cpus=0.25, ram="256MiB", version=version)
        pipe.group(dd.same_band, name="buckets", after=dd.bands, by=dd.band_key, partitions=8,
                   cpus=0.5, ram="512MiB", version=version)
        candidates.append("buckets")

    def cluster(candidates: Iterator[dict[str, Any]], ctx: Any) -> dict[str, str]:
        return dd.clusters(candidates, ctx.side("fingerprint"))

    pipe.reduce(cluster, name="clusters", after=candidates, side=[dd.fingerprint], cpus=1,
                ram="1GiB", version=version)
    return "clusters"


__all__ = ["DEDUPE", "build_dataset", "dedupe_stages"]
