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


def test_model_ref_names_what_an_index_records_and_refuses_what_is_not_here(tmp_path,
                                                                            small_model):
    from conveyor.docs.errors import ModelError

    assert model.model_ref(None) == model.MODEL_NAME
    assert model.model_ref("all-MiniLM-L6-v2") == model.MODEL_NAME
    assert model.model_folder(None) == model.model_path()
    assert model.model_ref(str(small_model)) == str(small_model)
    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"\0")
    refused = {
        str(tmp_path / "gone"): f"no such model folder: {tmp_path / 'gone'}",
        str(tmp_path / "empty"): f"model folder {tmp_path / 'empty'} holds no model (no "
                                 f"modules.json or config.json): save one there with "
                                 f"SentenceTransformer.save()",
        str(tmp_path / "weights.bin"): f"model {tmp_path / 'weights.bin'} is a file; give "
                                       f"the folder of a sentence-transformers model",
        "acme/no-such-model": "model 'acme/no-such-model' is neither a folder nor in the "
                              "local Hugging Face cache, and nothing is downloaded at run "
                              "time: download it first (`hf download acme/no-such-model`) "
                              "or give the folder of a sentence-transformers model",
    }
    for given, message in refused.items():
        with pytest.raises(ModelError) as info:
            model.model_ref(given)
        assert str(info.value) == message


def test_embed_stage_uses_the_model_it_was_made_with(tmp_path, small_model):
    from conveyor import Item
    from conveyor.docs.embed import Embed

    from .conftest import SMALL_DIM

    pipe = Pipeline("embed-small")
    pipe.stage(Embed.using(str(small_model)), name="embed", batch_size=4)
    texts = ["a cat sat on the mat", "stock markets fell sharply", "a kitten on a rug"]
    result = pipe.run([Item(f"t{i}", {"text": t}) for i, t in enumerate(texts)],
                      run_dir=tmp_path / "run", executor="inline")
    with result:
        outs = dict(result.outputs("embed"))
    vectors = np.stack([np.load(o["vectors"])[o["row"]] for o in outs.values()])
    assert vectors.shape == (3, SMALL_DIM)
    assert {o["model"] for o in outs.values()} == {str(small_model)}
    assert Embed.model_id == model.MODEL_NAME  # the base class keeps the default
