"""Export: the kept documents as sharded Parquet (or JSONL), in the Hugging Face layout.

::

    DEST/data/train-00000-of-000NN.parquet     kept rows, sorted by id, shards near --shard-size
    DEST/rejected/rejected-00000-of-000NN.parquet   id, source, reasons, duplicate_of
    DEST/manifest.json                          shards (rows, bytes, sha256), totals, parameters
    DEST/README.md                              the dataset card

``DEST`` is a folder or any fsspec URL (``s3://``, ``gs://``, ``hf://datasets/...``).
Shards are written in the run directory first, then each is put in place
whole: on a local filesystem under a temporary name and renamed, on an object
store by one upload (an object appears only once it is complete). The
manifest goes last: a reader that finds it finds every shard it lists. Objects
of an earlier export that the new manifest does not list are removed after
it. Uploads run ``concurrency`` at a time.

The export is a reduce: it runs when its input changed, and then writes every
shard again (the shard count follows the data); a rerun with nothing changed
writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from ..optional import require
from .card import dataset_card
from .errors import ExportError

SIGNALS = ("words", "mean_word_length", "symbol_ratio", "alpha_fraction", "stop_words",
           "dup_line_fraction", "top_2gram_fraction", "garbage_fraction",
           "replacement_fraction", "ocr_share", "lang_score")
DATA_SCHEMA = pa.schema(
    [("id", pa.string()), ("source", pa.string()), ("text", pa.string()),
     ("pages", pa.int32()), ("page_offsets", pa.list_(pa.int32())), ("lang", pa.string()),
     ("method", pa.string())]
    + [(name, pa.int32() if name in ("words", "stop_words") else pa.float64())
       for name in SIGNALS]
    + [("pii", pa.struct([("email", pa.int32()), ("ip", pa.int32()), ("phone", pa.int32())]))])
REJECTED_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()),
                             ("reasons", pa.list_(pa.string())),
                             ("duplicate_of", pa.string())])


def data_row(doc: Mapping[str, Any]) -> dict[str, Any]:
    sig = doc["signals"]
    return {"id": doc["id"], "source": doc["source"], "text": doc["text"],
            "pages": doc["pages"], "page_offsets": doc["page_offsets"], "lang": sig["lang"],
            "method": doc["method"], **{name: sig[name] for name in SIGNALS},
            "pii": doc.get("pii") or {"email": 0, "ip": 0, "phone": 0}}


class ShardWriter:
    """Rows to numbered local shard files, a new one once a file passes ``shard_bytes``."""

    def __init__(self, folder: Path, prefix: str, schema: pa.Schema, fmt: str,
                 shard_bytes: int) -> None:
        self.folder, self.prefix, self.schema = folder, prefix, schema
        self.fmt, self.shard_bytes = fmt, shard_bytes
        self.files: list[tuple[Path, int]] = []  # (path, rows)
        self._batch: list[dict[str, Any]] = []
        self._pending = 0  # bytes of text in the batch, roughly
        self._writer: Any = None
        self._rows = 0
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, row: dict[str, Any]) -> None:
        self._batch.append(row)
        self._pending += len(row.get("text") or "") + 256
        # A batch is a Parquet row group: flushed at a fraction of a shard (so shards end
        # near their size) and at most 16 MiB (so the export's memory stays flat).
        if self._pending >= min(self.shard_bytes // 4, 16 << 20):
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        if self._writer is None:
            path = self.folder / f"{self.prefix}-{len(self.files):05d}.{self.fmt}.part"
            self._writer = (pq.ParquetWriter(path, self.schema) if self.fmt == "parquet"
                            else open(path, "w", encoding="utf-8"))
            self.files.append((path, 0))
        if self.fmt == "parquet":
            self._writer.write_table(pa.Table.from_pylist(self._batch, schema=self.schema))
        else:
            for row in self._batch:
                self._writer.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._rows += len(self._batch)
        self._batch, self._pending = [], 0
        path = self.files[-1][0]
        self.files[-1] = (path, self._rows)
        if path.stat().st_size >= self.shard_bytes:
            self._close()

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer, self._rows = None, 0

    def finish(self) -> list[tuple[Path, int]]:
        self._flush()
        self._close()
        return self.files


def export(rows: Iterable[Mapping[str, Any]], dest: str, staging: Path, *, fmt: str,
           shard_bytes: int, concurrency: int, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Write the dataset of ``rows`` (the ``decide`` outputs, by id) to ``dest``; return the
    manifest."""
    ext = "parquet" if fmt == "parquet" else "jsonl"
    data = ShardWriter(staging / "data", "train", DATA_SCHEMA, ext, shard_bytes)
    rejected = ShardWriter(staging / "rejected", "rejected", REJECTED_SCHEMA, ext, shard_bytes)
    langs: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for doc in rows:
        if doc["keep"]:
            data.add(data_row(doc))
            langs[doc["signals"]["lang"]] = langs.get(doc["signals"]["lang"], 0) + 1
        else:
            rejected.add({"id": doc["id"], "source": doc["source"], "reasons": doc["reasons"],
                          "duplicate_of": doc.get("duplicate_of")})
            for reason in doc["reasons"]:
                reasons[reason_kind(reason)] = reasons.get(reason_kind(reason), 0) + 1
    objects = _named(data.finish(), "data", "train", ext) + _named(rejected.finish(),
                                                                   "rejected", "rejected", ext)
    manifest = {"format": fmt, "parameters": dict(parameters),
                "shards": [{"path": name, "rows": rows, "bytes": path.stat().st_size,
                            "sha256": _sha256(path)} for path, name, rows in objects],
                "rows": sum(r for _, name, r in objects if name.startswith("data/")),
                "rejected": sum(r for _, name, r in objects if name.startswith("rejected/")),
                "languages": dict(sorted(langs.items())),
                "rejected_by": dict(sorted(reasons.items()))}
    (staging / "README.md").write_text(dataset_card(manifest), encoding="utf-8")
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n",
                                           encoding="utf-8")
    publish(dest, staging, [name for _, name, _ in objects], concurrency)
    return manifest


# What a rejection can be about: the rules' names as their reasons start (signals.verdict),
# a duplicate, a document without text. Longest first.
KINDS = ("language score", "mean word length", "replacement characters", "duplicate lines",
         "alphabetic words", "symbol ratio", "stop words", "top 2-gram", "duplicate of",
         "language", "garbage", "no text", "words")


def reason_kind(reason: str) -> str:
    """What a rejection reason is about, without its figures: ``words 4 < 30`` -> ``words``."""
    return next((kind for kind in KINDS if reason.startswith(kind)), reason)


def _named(files: list[tuple[Path, int]], folder: str, prefix: str, ext: str
           ) -> list[tuple[Path, str, int]]:
    """Shards under their final names, ``prefix-00000-of-00003.ext``, once their count is known."""
    named = []
    for i, (path, rows) in enumerate(files):
        final = path.with_name(f"{prefix}-{i:05d}-of-{len(files):05d}.{ext}")
        os.replace(path, final)
        named.append((final, f"{folder}/{final.name}", rows))
    return named


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def publish(dest: str, staging: Path, shards: list[str], concurrency: int) -> None:
    """Put the shards, then the card, then the manifest at ``dest``; then remove what an
    earlier export left that the manifest does not list."""
    fsspec = require("fsspec", "store", f"exporting to {dest!r}", ExportError)
    try:
        fs, root = fsspec.core.url_to_fs(dest)
        root = root.rstrip("/")
        local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))

        def put(name: str) -> None:
            target = f"{root}/{name}"
            if local:  # aside, then renamed: a reader never sees half a file
                fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                aside = f"{target}.{uuid.uuid4().hex}.tmp"
                fs.put_file(str(staging / name), aside)
                os.replace(aside, target)
            else:  # one upload: an object store shows an object only once it is complete
                # (and has no folders to make: s3fs's makedirs probes the bucket, with retries)
                fs.put_file(str(staging / name), target)

        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            list(pool.map(put, shards))
        put("README.md")
        put("manifest.json")
        listed = set(shards)
        for folder in ("data", "rejected"):
            for path in _files(fs, f"{root}/{folder}"):
                if path.rsplit("/", 1)[-1] and f"{folder}/{path.rsplit('/', 1)[-1]}" not in listed:
                    fs.rm_file(path)
    except ExportError:
        raise
    except Exception as exc:  # the store's own error, named with where it happened
        raise ExportError(f"exporting to {dest!r} failed: {type(exc).__name__}: {exc}") from exc


def _files(fs: Any, folder: str) -> Iterator[str]:
    try:
        yield from fs.find(folder)
    except FileNotFoundError:
        return
