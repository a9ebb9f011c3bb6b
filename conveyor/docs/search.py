"""Searching a finished run: ``search(run_dir, "query", k=5)``.

The query is embedded by the same model as the chunks, the one the index
records (:mod:`.model`; the shipped MiniLM for an index that records none),
on the backend the index records (``torch`` for an index from before backends
were recorded; ``auto`` where its chunks were embedded by both), the usearch
index is memory-mapped, and the hits' rows are read from the chunk
table. A hit::

    {"score": 0.71, "text": "...", "path": "corpus/bundle.zip", "member": "tides.pdf",
     "source": "corpus/bundle.zip/tides.pdf", "doc": "<item key>", "page": 2,
     "pages": [2, 3], "method": "text" | "ocr"}

``score`` is the cosine similarity (higher is closer); ``path`` is the file
the user gave, on disk or its URL (the archive, for a member), and ``member``
the name inside it (``None`` for a plain PDF).
"""

from __future__ import annotations

import functools
import os
from typing import Any

from ..errors import LedgerError
from ..result import open_run
from .errors import IndexMissing, ModelError
from .model import MODEL_NAME, encode, load_model

INDEX_STAGE = "index"
_HIT_COLUMNS = ["row", "doc", "path", "source", "archive", "member", "method", "page", "pages",
                "text"]


def index_info(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``index`` output of a run (index and table paths); raises :class:`IndexMissing`."""
    try:
        result = open_run(run_dir)
    except LedgerError:
        raise IndexMissing(f"{run_dir} is not a conveyor run directory; "
                           f"run `conveyor docs INPUT... --run-dir {run_dir}` first") from None
    with result:
        try:
            values = [value for _, value in result.outputs(INDEX_STAGE)]
        except KeyError:
            raise IndexMissing(f"{run_dir} is a run of pipeline {result.pipeline!r}, which has "
                               f"no {INDEX_STAGE!r} stage") from None
    if len(values) != 1:
        raise IndexMissing(f"{run_dir} has no finished index yet; run `conveyor docs` on it "
                           f"again to finish it")
    return values[0]


@functools.lru_cache(maxsize=2)
def _model(device: str | None, model: str, backend: str) -> Any:
    return load_model(device, model, backend=backend)


def query_backend(info: dict[str, Any]) -> str:
    """The backend that embedded an index's chunks, or ``"auto"`` for a mix."""
    recorded = info.get("backend", "torch")
    return recorded if recorded in ("torch", "onnx") else "auto"


def search(run_dir: str | os.PathLike[str], query: str, k: int = 5,
           device: str | None = None, backend: str | None = None) -> list[dict[str, Any]]:
    """The ``k`` chunks closest to ``query``, best first; see the module docstring.

    ``backend`` (default: the index's, see :func:`query_backend`) embeds the
    query; ``onnx`` runs on the CPU whatever ``device`` would default to.
    """
    import pyarrow.parquet as pq
    from usearch.index import Index

    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    info = index_info(run_dir)
    if info["chunks"] == 0:
        return []
    index = Index.restore(info["index"], view=True)
    if index is None:
        raise IndexMissing(f"{info['index']} is not a usearch index")
    model = info.get("model", MODEL_NAME)
    backend = backend or query_backend(info)
    if backend == "onnx" and device is None:
        device = "cpu"
    try:
        vector = encode(_model(device, model, backend), [query])[0]
    except ModelError as exc:
        raise ModelError(f"the index in {run_dir} was built with model {model}, which "
                         f"cannot be loaded: {exc}") from None
    if len(vector) != info["dim"]:
        raise ModelError(f"model {model} gives vectors of {len(vector)} dimensions, but the "
                         f"index in {run_dir} holds {info['dim']}: its files changed since the "
                         f"index was built; build the index again in a new run directory")
    matches = index.search(vector, min(k, info["chunks"]))
    table = pq.read_table(info["table"], columns=_HIT_COLUMNS)
    hits = []
    for key, distance in zip(matches.keys.tolist(), matches.distances.tolist()):
        row = {name: table.column(name)[key].as_py() for name in _HIT_COLUMNS}
        hits.append({
            "score": round(1.0 - float(distance), 4), "text": row["text"],
            "path": row["archive"] or row["source"], "member": row["member"],
            "source": row["source"], "doc": row["doc"], "page": row["page"],
            "pages": row["pages"], "method": row["method"],
        })
    return hits
