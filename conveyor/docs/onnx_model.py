"""The embedding model on ONNX Runtime: exported from the shipped weights once, cached.

No ONNX file ships with the model, so the first use exports one from the
PyTorch weights (the transformer, mean pooling and normalisation in one
graph) and caches it; every later load, in any worker, reads the cache::

    $CONVEYOR_ONNX_CACHE (default ~/.cache/conveyor/onnx)/
        <key>/model.onnx, export.json   a finished export (export.json written last)
        <key>.lock                      flock: one exporter at a time
        <key>.tmp-PID/                  being written; renamed to <key>/ when complete

``key`` digests the model folder's path, its files' names, sizes and
modification times, and :data:`EXPORTER_VERSION`, so new weights or a new
recipe export anew. Workers racing at first use take turns on the lock:
the first exports, the others wait and then load its file. A cache folder
whose ``export.json`` is missing or does not match its ``model.onnx`` (a
crash, a disk filled up, a hand edit) is exported again.

Tokenising uses the model's own fast tokenizer (``tokenizer.json``), with the
same truncation as sentence-transformers (``max_seq_length``); ORT's threads
follow the worker's pinned thread count (``CONVEYOR_THREADS``, else
``OMP_NUM_THREADS``, else ORT's default of every core).

The exported graph is then fused by ORT's transformer optimizer (attention,
embedding and skip layer norms, GELU into their fused kernels): the same
arithmetic in fewer operators (cosine 0.99999 to the plain export; a few
percent faster: 0.96x PyTorch's rate against 0.94x unfused). Weights stay float32: int8 dynamic quantisation embeds
1.4-1.5x faster here (MatMul weights per channel, or every operator), but
moves the vectors of short texts ("", "x", one sentence) to a cosine of
0.977-0.989 from PyTorch's, under the 0.99 bar ``tests/docs/test_onnx.py``
checks per vector (``benchmarks/docs_onnx.py`` measures both).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .errors import DocsError

CACHE_VAR = "CONVEYOR_ONNX_CACHE"
EXPORTER_VERSION = "2"  # bump when export() changes what it writes
ONNX_FILE = "model.onnx"
MARKER = "export.json"  # written last inside a finished export
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OnnxExportError(DocsError):
    """The model could not be exported to ONNX or loaded in ONNX Runtime."""


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_VAR) or Path.home() / ".cache" / "conveyor" / "onnx")


def cache_key(model_dir: str) -> str:
    """A digest of the model folder's path, its files (name, size, mtime) and the recipe.

    File stats, not contents: hashing 90 MB of weights in every worker's setup
    would cost more than the load it guards.
    """
    root = Path(model_dir).resolve()
    h = hashlib.blake2b(digest_size=10)
    h.update(f"{root}\0{EXPORTER_VERSION}\0".encode())
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        st = path.stat()
        h.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def finished(folder: Path) -> bool:
    """Whether ``folder`` holds a complete export (its marker matches its ONNX file)."""
    try:
        marker = json.loads((folder / MARKER).read_text())
        return (folder / ONNX_FILE).stat().st_size == marker["bytes"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def ensure_onnx(model_dir: str, cache: Path | None = None) -> tuple[Path, bool]:
    """The cached ONNX file for ``model_dir`` and whether this call exported it."""
    cache = cache or cache_root()
    key = cache_key(model_dir)
    final = cache / key
    if finished(final):
        return final / ONNX_FILE, False
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / f"{key}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes or the process dies
            if finished(final):  # another worker exported it while this one waited
                return final / ONNX_FILE, False
            _export_into(model_dir, cache / f"{key}.tmp-{os.getpid()}", final)
    except OSError as exc:
        raise OnnxExportError(f"cannot write the ONNX cache {str(cache)!r} (set {CACHE_VAR} "
                              f"to a writable folder): {exc}") from None
    return final / ONNX_FILE, True


def _export_into(model_dir: str, tmp: Path, final: Path) -> None:
    """Export into ``tmp``, mark it finished, and rename it to ``final`` (lock held)."""
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        export(model_dir, tmp / ONNX_FILE)
        marker = {"model": str(Path(model_dir).resolve()), "exporter": EXPORTER_VERSION,
                  "bytes": (tmp / ONNX_FILE).stat().st_size}
        (tmp / MARKER).write_text(json.dumps(marker) + "\n")
        if final.exists():  # an unfinished export: nobody can be using it
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def unexportable(model_dir: str) -> str | None:
    """Why the export would not represent this model (None: it would): see
    :func:`_pooling_is_mean`."""
    try:
        if not _pooling_is_mean(Path(model_dir)):
            return (f"{model_dir}: only a transformer with mean pooling (and "
                    f"normalisation) exports to ONNX here")
    except (OSError, ValueError, KeyError) as exc:
        return f"{model_dir} is not a sentence-transformers model folder: {exc}"
    return None


def _pooling_is_mean(model_dir: Path) -> bool:
    """Whether the sentence-transformers model is what the export writes: a transformer
    in the model's own folder, pooled by the mean of its tokens, then at most normalised
    (a Dense layer or another module after it would be left out, so such a model is not
    exported)."""
    modules = json.loads((model_dir / "modules.json").read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]) \
            or modules[0].get("path", "") != "":
        return False
    pooling = [m for m in modules if m["type"].endswith(".Pooling")]
    config = json.loads((model_dir / pooling[0]["path"] / "config.json").read_text())
    return bool(config.get("pooling_mode_mean_tokens")) and not any(
        v for k, v in config.items() if k.startswith("pooling_mode_") and
        k != "pooling_mode_mean_tokens")


def export(model_dir: str, dest: Path) -> None:
    """Write the model (transformer, mean pooling, L2 normalisation) as one ONNX graph.

    The TorchScript exporter (``dynamo=False``): on this model the dynamo
    exporter took 10x longer and its graph disagreed with PyTorch (cosines
    down to -0.1 on padded batches). Eager attention, not SDPA, so that
    ONNX Runtime fuses it into its ``Attention`` kernel.
    """
    folder = Path(model_dir)
    reason = unexportable(model_dir)
    if reason:
        raise OnnxExportError(reason)
    import warnings

    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()

    class Sentence(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            tokens = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            mean = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2, dim=1)

    # A padded two-row batch, so that tracing sees a mask with zeros in it.
    ids = torch.tensor([[101, 2023, 2003, 102], [101, 2023, 102, 0]])
    sample = (ids, (ids > 0).long(), torch.zeros_like(ids))
    axes = {name: {0: "batch", 1: "tokens"} for name in INPUTS}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
            torch.onnx.export(Sentence(), sample, str(dest), dynamo=False, input_names=list(INPUTS),
                              output_names=["embedding"],
                              dynamic_axes={**axes, "embedding": {0: "batch"}},
                              opset_version=17)
    except Exception as exc:  # the exporter raises many kinds; all mean "no ONNX model"
        raise OnnxExportError(f"exporting {model_dir} to ONNX failed: "
                              f"{type(exc).__name__}: {exc}") from exc
    _fuse(dest, model.config)


def _fuse(path: Path, config: Any) -> None:
    """Rewrite the exported graph at ``path`` with ORT's fused transformer operators."""
    from onnxruntime.transformers import optimizer

    fused = path.with_name("fused.onnx")
    try:
        optimizer.optimize_model(str(path), model_type="bert",
                                 num_heads=config.num_attention_heads,
                                 hidden_size=config.hidden_size,
                                 opt_level=1).save_model_to_file(str(fused))
        os.replace(fused, path)
    except Exception as exc:  # ORT's optimizer raises many kinds; all mean "not fused"
        raise OnnxExportError(f"fusing the ONNX export of {path} failed: "
                              f"{type(exc).__name__}: {exc}") from exc
    finally:
        fused.unlink(missing_ok=True)


def session_threads() -> int:
    """The worker's pinned thread count, or 0 (ORT's default: every core) outside a worker."""
    for var in ("CONVEYOR_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 0


class OnnxEncoder:
    """The exported model in an ONNX Runtime session, with the model's tokenizer."""

    backend = "onnx"

    def __init__(self, model_dir: str, cache: Path | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        folder = Path(model_dir)
        self.path, self.exported = ensure_onnx(model_dir, cache)
        try:
            self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            config = json.loads((folder / "sentence_bert_config.json").read_text())
        except (OSError, ValueError) as exc:
            raise OnnxExportError(f"{model_dir}: cannot read its tokenizer: {exc}") from None
        self.tokenizer.no_padding()  # encode() pads each batch to its longest text
        self.tokenizer.enable_truncation(max_length=int(config["max_seq_length"]))
        options = ort.SessionOptions()
        options.intra_op_num_threads = session_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: no per-worker banner of notes
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise OnnxExportError(f"ONNX Runtime cannot load {self.path}: {exc}; delete that "
                                  f"folder to export it again") from exc
        self.inputs = [i.name for i in self.session.get_inputs()]

    def encode(self, texts: list[str], batch_size: int = 32) -> Any:
        """Unit-length float32 vectors, one row per text."""
        import numpy as np

        if not texts:
            return np.zeros((0, self.session.get_outputs()[0].shape[1]), dtype=np.float32)
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer.encode_batch(texts[start:start + batch_size])
            width = max(len(e.ids) for e in batch)
            feed = {name: np.zeros((len(batch), width), dtype=np.int64) for name in INPUTS}
            for row, e in enumerate(batch):  # padding: zeros, masked out of attention and mean
                feed["input_ids"][row, :len(e.ids)] = e.ids
                feed["attention_mask"][row, :len(e.ids)] = e.attention_mask
                feed["token_type_ids"][row, :len(e.ids)] = e.type_ids
            out.append(self.session.run(None, {k: feed[k] for k in self.inputs})[0])
        return np.concatenate(out).astype(np.float32, copy=False)
