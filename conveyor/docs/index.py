"""The ``index`` reduce: every embedded chunk into a vector index and a chunk table, on disk.

Two files in the reduce's artifact folder, written to temporary names and
renamed into place once complete:

- ``vectors.usearch``: a usearch HNSW index (cosine) over the chunk vectors,
  keyed by row number;
- ``chunks.parquet``: the chunk table, one row per chunk (``row``, ``doc``,
  ``path``, ``source``, ``archive``, ``member``, ``method``, ``index``,
  ``page``, ``pages``, ``spans``, ``text``, ``vector``).

Why usearch + Parquet rather than LanceDB or faiss: usearch is one small
wheel with no dependencies beyond NumPy, well maintained, and its index is a
single file that can be memory-mapped (``view=True``) so a search process
pays no load time and little RAM however large the index; Parquet (pyarrow)
is the columnar format every data tool reads (pandas, DuckDB, Spark, Polars),
so the chunk table outlives this library. LanceDB would give both in one
dataset, but pulls a much larger stack (lance, pydantic, its own versioned
folder layout) for a table we only append once; faiss-cpu has no maintained
wheels for every Python and platform we target.

The reduce streams: it reads its input one chunk at a time, writes the table
in row groups and adds vectors to the index in blocks, so its memory is the
index itself plus one block, not every chunk's text.

``index.json`` (and the table's metadata) record how the index was made: the
model (:func:`conveyor.docs.model.model_ref`: the name, or the folder), the
vectors' dimension, and the chunking (``chunk_size``, ``chunk_overlap``,
``chunk_unit``), so a search embeds its query with the same model.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from .chunk import MAX_CHARS, OVERLAP
from .model import DIM, MODEL_NAME

INDEX_FILE = "vectors.usearch"
TABLE_FILE = "chunks.parquet"
BLOCK = 4096  # rows per Parquet row group and per index insertion


DEFAULTS = {"model": MODEL_NAME, "chunk_size": MAX_CHARS, "chunk_overlap": OVERLAP,
            "chunk_unit": "chars"}


def table_schema(dim: int = DIM, made: dict[str, Any] | None = None) -> Any:
    """The chunk table's schema; ``made`` (how the index was made) goes in its metadata."""
    import pyarrow as pa

    span = pa.struct([("page", pa.int32()), ("start", pa.int32()), ("end", pa.int32())])
    return pa.schema([
        ("row", pa.int64()), ("doc", pa.string()), ("path", pa.string()),
        ("source", pa.string()), ("archive", pa.string()), ("member", pa.string()),
        ("method", pa.string()), ("index", pa.int32()), ("page", pa.int32()),
        ("pages", pa.list_(pa.int32())), ("spans", pa.list_(span)), ("text", pa.string()),
        ("vector", pa.list_(pa.float32(), dim)),
    ], metadata={**{k: str(v) for k, v in (made or DEFAULTS).items()}, "dim": str(dim),
                 "metric": "cos"})


class _Vectors:
    """Reads rows of the embed stage's ``.npy`` batch files, keeping a few open."""

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self.files: dict[str, Any] = {}

    def row(self, path: str, row: int) -> Any:
        import numpy as np

        array = self.files.get(path)
        if array is None:
            if len(self.files) >= self.keep:
                self.files.pop(next(iter(self.files)))
            array = self.files[path] = np.load(path, mmap_mode="r")
        return array[row]


def build_index(chunks: Iterable[dict[str, Any]], folder: str | os.PathLike[str],
                made: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the index and the table for ``chunks`` (``embed`` outputs) into ``folder``;
    ``made`` is how (see :data:`DEFAULTS`), recorded beside it. The dimension is the
    vectors' own (0 for an index with none)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from usearch.index import Index

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    made = {**DEFAULTS, **(made or {})}
    vectors = _Vectors()
    chunks = iter(chunks)
    first = next(chunks, None)
    dim = 0 if first is None else len(vectors.row(first["vectors"], first["row"]))
    schema = table_schema(dim, made)
    index = Index(ndim=dim, metric="cos", dtype="f32")
    table_tmp = folder / f".{TABLE_FILE}.tmp"
    index_tmp = folder / f".{INDEX_FILE}.tmp"
    rows = 0
    docs: set[str] = set()
    backends: set[str] = set()
    block: list[dict[str, Any]] = []
    with pq.ParquetWriter(table_tmp, schema) as writer:
        def flush() -> None:
            if not block:
                return
            matrix = np.stack([r["vector"] for r in block]).astype(np.float32)
            index.add(np.array([r["row"] for r in block], dtype=np.uint64), matrix)
            columns = {name: [r[name] for r in block] for name in schema.names if name != "vector"}
            columns["vector"] = [v.tolist() for v in matrix]
            writer.write_table(pa.Table.from_pydict(columns, schema=schema))
            block.clear()

        for chunk in itertools.chain([first] if first is not None else [], chunks):
            block.append({
                "row": rows, "doc": chunk["doc"], "path": chunk["path"],
                "source": chunk["source"], "archive": chunk.get("archive"),
                "member": chunk.get("member"), "method": chunk["method"],
                "index": chunk["index"], "page": chunk["page"], "pages": chunk["pages"],
                "spans": chunk["spans"], "text": chunk["text"],
                "vector": np.asarray(vectors.row(chunk["vectors"], chunk["row"])),
            })
            docs.add(chunk["doc"])
            backends.add(chunk.get("backend", "torch"))  # outputs from before backends: torch
            rows += 1
            if len(block) >= BLOCK:
                flush()
        flush()
    index.save(str(index_tmp))
    os.replace(table_tmp, folder / TABLE_FILE)
    os.replace(index_tmp, folder / INDEX_FILE)
    info = {"index": str(folder / INDEX_FILE), "table": str(folder / TABLE_FILE),
            "chunks": rows, "documents": len(docs), "dim": dim, "metric": "cos", **made,
            "backend": ",".join(sorted(backends))}
    (folder / "index.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def index_stage(made: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    """The ``index`` reduce for an index made as ``made`` says (plain data: it is part of
    the stage's fingerprint, so another model or chunking rebuilds the index)."""
    def index(chunks: Iterable[dict[str, Any]], ctx: Any) -> dict[str, Any]:
        """:func:`build_index` into the reduce's artifact folder."""
        return build_index(chunks, ctx.output_dir, made)

    return index
