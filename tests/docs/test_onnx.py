"""The ONNX Runtime backend: same vectors and same hits as PyTorch, the export cached and rebuilt.

Real model weights, real exports (each ~10 s): the cache tests export three
times in all, into a temporary cache.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pytest

from conveyor.docs import model
from conveyor.docs.errors import DocsError
from conveyor.docs.onnx_model import (
    MARKER,
    OnnxEncoder,
    OnnxExportError,
    ensure_onnx,
    finished,
)
from conveyor.docs.topics import TOPICS


@pytest.fixture(scope="module")
def encoders() -> tuple[object, object]:
    """The ONNX and the PyTorch model, both on the CPU."""
    return model.load_model("cpu", backend="onnx"), model.load_model("cpu", backend="torch")


def test_auto_is_onnx_on_the_cpu_and_torch_on_cuda():
    assert model.resolve_backend("auto", "cpu") == "onnx"
    assert model.resolve_backend("auto", "cuda") == "torch"
    assert model.resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(DocsError, match="unknown embedding backend 'tensorrt'"):
        model.resolve_backend("tensorrt", "cpu")
    with pytest.raises(DocsError, match="CPU only"):
        model.resolve_backend("onnx", "cuda")


def test_onnx_vectors_agree_with_pytorch(encoders):
    onnx, torch = encoders
    assert model.backend_of(onnx) == "onnx" and model.backend_of(torch) == "torch"
    sentences = [s for t in TOPICS.values() for s in t["sentences"]]  # type: ignore[union-attr]
    texts = sentences + [" ".join(sentences)[:4000], "x", "", "Ünïcödé — ½ ∑ 東京"]
    # Batches of 7 pad short sentences next to long ones; the long text is truncated.
    ours, theirs = model.encode(onnx, texts, 7), model.encode(torch, texts, 7)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape == (len(texts), model.DIM)
    cosines = (ours * theirs).sum(axis=1)
    assert cosines.min() >= 0.99, [(texts[i][:40], cosines[i]) for i in np.argsort(cosines)[:3]]


def test_demo_run_embeds_with_onnx_and_its_queries_find_the_same_top_hit(demo_run, encoders):
    import pyarrow.parquet as pq

    from conveyor.docs.search import index_info, search

    info = index_info(demo_run["run_dir"])
    assert info["backend"] == "onnx"
    texts = pq.read_table(info["table"], columns=["text"]).column("text").to_pylist()
    onnx, torch = encoders
    cosines = (model.encode(onnx, texts) * model.encode(torch, texts)).sum(axis=1)
    assert len(texts) > 10 and cosines.min() >= 0.99
    for query in demo_run["manifest"]["queries"]:
        by_torch = search(demo_run["run_dir"], query["query"], k=1, backend="torch")
        by_onnx = search(demo_run["run_dir"], query["query"], k=1, backend="onnx")
        assert (by_onnx[0]["source"], by_onnx[0]["text"]) == (by_torch[0]["source"],
                                                              by_torch[0]["text"]), query


def _ensure(args: tuple[str, str]) -> bool:
    return ensure_onnx(args[0], Path(args[1]))[1]


def test_export_is_cached_reused_and_rebuilt_when_broken(tmp_path):
    cache = tmp_path / "cache"
    folder = model.model_path()
    # Two processes at first use: the lock lets one export; the other loads its file.
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        exported = pool.map(_ensure, [(folder, str(cache))] * 2)
    assert sorted(exported) == [False, True]
    folders = [p for p in cache.iterdir() if p.is_dir()]  # no temporary folder left over
    assert len(folders) == 1 and finished(folders[0])
    path, again = ensure_onnx(folder, cache)
    first = path.stat()
    assert not again
    encoder = OnnxEncoder(folder, cache)
    assert not encoder.exported and encoder.path.stat().st_ino == first.st_ino

    with open(path, "r+b") as fh:  # a torn write: the size no longer matches the marker
        fh.truncate(first.st_size // 2)
    path, rebuilt = ensure_onnx(folder, cache)
    assert rebuilt and path.stat().st_size == first.st_size

    (path.parent / MARKER).unlink()  # an export that never finished
    path, rebuilt = ensure_onnx(folder, cache)
    assert rebuilt and json.loads((path.parent / MARKER).read_text())["bytes"] == first.st_size
    assert sorted(p.name for p in cache.iterdir()) == sorted([path.parent.name,
                                                             f"{path.parent.name}.lock"])


def test_a_model_that_does_not_mean_pool_is_refused(tmp_path):
    folder = tmp_path / "cls-model"
    shutil.copytree(model.model_path(), folder)
    config = folder / "1_Pooling" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()),
                                  "pooling_mode_mean_tokens": False,
                                  "pooling_mode_cls_token": True}))
    with pytest.raises(OnnxExportError, match="only a transformer with mean pooling"):
        OnnxEncoder(str(folder), tmp_path / "cache")


def test_a_model_with_a_layer_after_its_pooling_embeds_on_torch_with_that_layer(small_model,
                                                                               caplog):
    # small_model: MiniLM + a Dense layer 384 -> 128, which the export would leave out
    with pytest.raises(OnnxExportError, match="only a transformer with mean pooling"):
        model.load_model("cpu", str(small_model), backend="onnx")
    with caplog.at_level(logging.WARNING, logger="conveyor.docs.model"):
        auto = model.load_model("cpu", str(small_model))
    assert model.backend_of(auto) == "torch" and caplog.text == ""  # by design, not a failure
    assert model.encode(auto, ["owls hunt at night"]).shape == (1, 128)


def test_auto_falls_back_to_torch_when_the_export_fails_and_onnx_does_not(tmp_path,
                                                                         monkeypatch, caplog):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv("CONVEYOR_ONNX_CACHE", str(not_a_folder / "onnx"))
    with caplog.at_level(logging.WARNING, logger="conveyor.docs.model"):
        fallback = model.load_model("cpu", backend="auto")
    assert model.backend_of(fallback) == "torch"
    assert "instead of ONNX Runtime" in caplog.text and "CONVEYOR_ONNX_CACHE" in caplog.text
    with pytest.raises(OnnxExportError, match="cannot write the ONNX cache"):
        model.load_model("cpu", backend="onnx")
