"""Where embed runs: declared GPUs by machine or by choice, the device the model uses, imports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conveyor import Pipeline
from conveyor.docs import model
from conveyor.docs.pipeline import build_pipeline, gpu_available


def test_embed_declares_a_gpu_only_where_there_is_one():
    auto = build_pipeline()
    assert auto["embed"].resources.gpus == (1 if gpu_available() else 0)
    assert build_pipeline(embed_gpus=0)["embed"].resources.gpus == 0
    assert build_pipeline(embed_gpus=0)["embed"].resources.threads == 1
    forced = build_pipeline(embed_gpus=1)["embed"]
    assert forced.resources.gpus == 1 and forced.batch_size >= 64
    with pytest.raises(ValueError):
        build_pipeline(embed_gpus=-1)


def test_cpu_only_default_build_fits_the_default_budget():
    from conveyor.resources import Budget

    budget = Budget.detect()
    pipe = build_pipeline()
    for stage in pipe.stages.values():
        budget.check_fits(stage.name, stage.resources)  # raises BudgetError if not


def test_device_follows_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert model.pick_device() == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert model.pick_device() == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    import torch

    assert model.pick_device() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_embed_stage_writes_unit_vectors_to_a_file_per_batch(tmp_path):
    """The stage class through a one-stage pipeline: setup once, batches, vectors on disk."""
    from conveyor.docs.embed import Embed

    pipe = Pipeline("embed-only")
    pipe.stage(Embed, name="embed", batch_size=4)
    texts = ["a cat sat on the mat", "stock markets fell sharply", "a kitten on a rug",
             "shares dropped in trading", "rain is expected tomorrow"]
    from conveyor import Item

    result = pipe.run([Item(f"t{i}", {"text": t}) for i, t in enumerate(texts)],
                      run_dir=tmp_path / "run", executor="inline")
    with result:
        outs = dict(result.outputs("embed"))
    vectors = np.stack([np.load(outs[f"t{i}"]["vectors"])[outs[f"t{i}"]["row"]]
                        for i in range(len(texts))])
    assert vectors.shape == (5, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    sims = vectors @ vectors.T
    assert sims[0, 2] > sims[0, 1] and sims[1, 3] > sims[1, 2]  # cat~kitten, stocks~shares
    assert {o["device"] for o in outs.values()} == {"cpu"}
    assert {o["backend"] for o in outs.values()} == {"onnx"}  # auto, on the CPU
    assert len({o["vectors"] for o in outs.values()}) == 2  # batches of 4 and 1


def test_importing_conveyor_docs_imports_no_heavy_library():
    code = ("import sys, conveyor.docs, conveyor.docs.cli, conveyor.docs.demo, "
            "conveyor.docs.corpus; conveyor.docs.build_pipeline(); "
            "print(sorted(m for m in ('torch', 'sentence_transformers', 'pypdfium2', "
            "'rapidocr_onnxruntime', 'onnxruntime', 'onnx', 'tokenizers', 'pyarrow', 'usearch', "
            "'reportlab', 'numpy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
