"""The document pipeline: folders and archives of PDFs in, a searchable index out.

Stages (each an ordinary conveyor stage, usable on its own):

==========  ===================================================  ==========================
stage       what it does                                          module
==========  ===================================================  ==========================
expand      files, folders, zip/tar/7z/rar → one item per PDF    :mod:`.archives`
inspect     pages, encryption, text layer, scanned pages          :mod:`.profile`
extract     text layer of text pages (pypdfium2)                  :mod:`.extract`
ocr_pages   one item per scanned page                             :mod:`.ocr`
ocr         render (``/Rotate``, CropBox) + rapidocr              :mod:`.ocr`
chunk       page-aware overlapping chunks, in chars or tokens     :mod:`.chunk`
embed       all-MiniLM-L6-v2 or your model, GPU when there is one :mod:`.embed`
index       usearch index + Parquet chunk table (reduce)          :mod:`.index`
==========  ===================================================  ==========================

``build_pipeline()`` wires them (:mod:`.pipeline`); :func:`search` queries a
finished run; :mod:`.corpus` makes a sample corpus with known text and
:mod:`.demo` runs the whole thing. Importing this package imports no heavy
library: pypdfium2, rapidocr, torch and sentence-transformers load inside the
stages that use them. Install with ``pip install 'conveyor[docs]'``.
"""

from __future__ import annotations

from .errors import (
    ArchiveError,
    BadDocument,
    DocsError,
    IndexMissing,
    ModelError,
    UnsafeArchive,
)
from .pipeline import build_pipeline
from .search import search

__all__ = ["ArchiveError", "BadDocument", "DocsError", "IndexMissing", "ModelError",
           "UnsafeArchive", "build_pipeline", "search"]
