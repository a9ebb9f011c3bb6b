"""From a PDF collection to a clean, filtered, deduplicated dataset: ``conveyor dataset``.

The front half is the document pipeline's (expand, inspect, extract, OCR);
then, one family of stages per module: :mod:`.clean` (assemble a document,
repair and normalise its text), :mod:`.signals` (quality signals, language,
the keep-or-reject rules), :mod:`.pii` (redaction), :mod:`.dedupe` (exact and
MinHash-LSH, with group stages and a side input), :mod:`.export` (sharded
Parquet or JSONL, rejected rows with reasons, a manifest and a dataset card,
to a folder or any fsspec URL). :func:`build_dataset` wires them
(:mod:`.pipeline`); the stages are importable for pipelines of one's own.
Needs ``pip install 'conveyor[dataset]'`` (and ``[docs]`` for the PDF stages).
"""

from .errors import DatasetError, ExportError

__all__ = ["DatasetError", "ExportError"]
