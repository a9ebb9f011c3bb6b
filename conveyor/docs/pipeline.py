"""The document pipeline, wired: :func:`build_pipeline`.

::

    expand ──┬─▶ unpack ─┐  (an archive: its members, archives inside opened in turn)
    (a file: │           ▼
     an item)└─────────▶ + ─┬─▶ inspect ─┬─ text pages ─▶ extract ─────────────┬─▶ chunk ─▶ embed ─▶ index
                            │            └─ scanned pages ─▶ ocr_pages ─▶ ocr ─┘  fan-out  batches   reduce
                            └─▶ skipped (not a document: the reason)

Resources follow what each stage was measured to spend (``conveyor status
--json``: used cores while busy and peak RSS, see :mod:`conveyor.observe.usage`):
``expand``, ``unpack``, ``skipped`` and ``ocr_pages`` wait on files or do next
to nothing (a quarter to half a CPU); ``inspect`` (hashing and the text of
every page) and ``chunk`` are pure CPU while busy, so they take one CPU like
``extract``; ``ocr`` one CPU and one pinned thread per worker, so a machine
with N cores reads N pages at once; ``embed`` batches chunks and declares ``gpus=1`` when
the machine has a GPU; ``index`` holds RAM for the whole vector index.

GPU or CPU for ``embed``: ``build_pipeline(embed_gpus=None)`` (the default)
asks NVML whether this machine has a GPU and declares ``gpus=1`` only then.
On a CPU-only machine the stage declares no GPU, so the default budget (no
GPUs) schedules it and it runs on the CPU with one thread per worker, as many
workers as the scheduler finds worth it. To force CPU on a machine with a
GPU, build with ``embed_gpus=0`` (``conveyor docs --gpus 0``): the worker
then gets ``CUDA_VISIBLE_DEVICES=""`` and the model loads on the CPU.
``embed_gpus=1`` declares a device even where NVML sees none (then the run
needs ``gpus=1`` in its budget). ``pipeline`` is the default build, for
``conveyor run conveyor.docs.pipeline:pipeline``.

Model and chunking: ``model`` is a folder holding a sentence-transformers
model or a name in the local Hugging Face cache (None: the shipped
all-MiniLM-L6-v2); ``chunk_size``/``chunk_overlap`` count ``chunk_unit``
(``"chars"``, or ``"tokens"`` of the model's tokenizer); see
:meth:`.chunk.Chunk.using` for the defaults. They are part of the
fingerprints of the stages they change (chunk, embed, index), so a rerun with
other options recomputes those and reuses what was read.
"""

from __future__ import annotations

import json
from typing import Any

from ..pipeline import Pipeline
from ..resources import detect_gpus
from .archives import expand, is_archive, is_document, is_skipped, skipped, unpack
from .chunk import Chunk
from .embed import Embed
from .extract import extract
from .index import index_stage
from .ocr import Ocr, ocr_pages
from .profile import has_ocr_pages, has_text_pages, inspect

VERSION = "2"  # bump when helper code a stage calls changes what it computes
CPU_BATCH = 32
GPU_BATCH = 128


def gpu_available() -> bool:
    """Whether NVML sees a GPU this process may use (no torch import)."""
    return bool(detect_gpus())


def add_reading_stages(pipe: Pipeline, version: str) -> None:
    """The stages that turn inputs into text: expand, unpack, skipped, inspect, extract,
    ocr_pages and ocr (the first half of the diagram; ``conveyor.dataset`` starts with
    them too)."""
    pipe.stage(expand, cpus=0.25, ram="256MiB", version=version)
    pipe.stage(unpack, after=expand, when=is_archive, cpus=0.5, ram="512MiB", timeout=3600,
               version=version)
    pipe.stage(skipped, after=[expand, unpack], when=is_skipped, cpus=0.25, ram="256MiB",
               version=version)
    # Measured on 8-page text PDFs: 1.0 core while busy (0.54 with its file reads counted
    # as busy on a loaded machine) and a peak of 40 MiB: it burnt a core at cpus=0.5.
    pipe.stage(inspect, after=[expand, unpack], when=is_document, cpus=1, ram="512MiB",
               timeout=300, version=version)
    pipe.stage(extract, after=inspect, when=has_text_pages, cpus=1, ram="1GiB", timeout=600,
               version=version)
    pipe.stage(ocr_pages, after=inspect, when=has_ocr_pages, cpus=0.25, version=version)
    pipe.stage(Ocr, name="ocr", after=ocr_pages, cpus=1, threads=1, ram="1536MiB",
               retries=1, timeout=300, version=version)


def build_pipeline(embed_gpus: float | None = None, name: str = "docs", *,
                   model: str | None = None, chunk_size: int | None = None,
                   chunk_overlap: int | None = None, chunk_unit: str = "chars") -> Pipeline:
    """The document pipeline; see the module docstring for resources, ``embed_gpus``,
    ``model`` and the chunking.

    Raises:
        ValueError: ``embed_gpus`` below 0, or chunking that cannot work.
        ModelError: ``model`` is not on this machine (nothing is downloaded).
    """
    if embed_gpus is None:
        embed_gpus = 1 if gpu_available() else 0
    if embed_gpus < 0:
        raise ValueError(f"embed_gpus must be >= 0, got {embed_gpus}")
    chunker = Chunk.using(chunk_size, chunk_overlap, chunk_unit, model)
    embedder = Embed.using(model)
    made = {"model": embedder.model_id, "chunk_size": chunker.size,
            "chunk_overlap": chunker.overlap, "chunk_unit": chunker.unit}
    pipe = Pipeline(name).built_by(build_pipeline, embed_gpus=embed_gpus, name=name,
                                   model=embedder.model_id, chunk_size=chunker.size,
                                   chunk_overlap=chunker.overlap, chunk_unit=chunker.unit)
    add_reading_stages(pipe, VERSION)
    # Chunk and Embed are classes carrying their options, which the fingerprint does not
    # read: the options go in their versions (the model in chunk's only for tokens).
    # Pure-Python text splitting: CPU-bound while busy (1.04 cores on the sample corpus).
    chunking = {k: v for k, v in made.items() if k != "model" or chunker.unit == "tokens"}
    pipe.stage(chunker, name="chunk", after=[extract, "ocr"], cpus=1,
               ram="768MiB" if chunker.unit == "tokens" else "256MiB",  # + transformers
               version=f"{VERSION} {json.dumps(chunking, sort_keys=True)}")
    embed_version = f"{VERSION} {embedder.model_id}"
    if embed_gpus:
        pipe.stage(embedder, name="embed", after="chunk", gpus=embed_gpus, cpus=1, ram="4GiB",
                   batch_size=GPU_BATCH, retries=1, timeout=600, version=embed_version)
    else:
        pipe.stage(embedder, name="embed", after="chunk", cpus=1, threads=1, ram="1536MiB",
                   batch_size=CPU_BATCH, retries=1, timeout=600, version=embed_version)
    pipe.reduce(index_stage(made), name="index", after="embed", cpus=1, ram="2GiB",
                version=VERSION)
    return pipe


def __getattr__(name: str) -> Any:
    if name == "pipeline":  # built on first use: detecting GPUs is not for import time
        value = build_pipeline()
        globals()["pipeline"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
