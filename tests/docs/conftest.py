"""Fixtures for the document pipeline tests: one generated corpus and one demo run, shared.

The demo run (the whole pipeline on the whole sample corpus, with the local
executor: real OCR, the real model) is the expensive part, about 30 s on two
cores, so it runs once per session and the tests read its run directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run ``conveyor.docs.demo.main``; its corpus, manifest, run dir and exit status."""
    from conveyor.docs.corpus import load_manifest
    from conveyor.docs.demo import main

    root = tmp_path_factory.mktemp("demo")
    run_dir = root / "run"
    status = main(run_dir)
    corpus = root / "run-corpus"
    return {"status": status, "run_dir": run_dir, "corpus": corpus,
            "manifest": load_manifest(corpus)}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A freshly generated corpus (not touched by any run) and its manifest."""
    from conveyor.docs.corpus import generate_corpus

    root = tmp_path_factory.mktemp("corpus")
    return root, generate_corpus(root)


def doc_by_file(manifest: dict[str, Any], file: str) -> dict[str, Any]:
    return next(d for d in manifest["documents"] if d["file"] == file)


def source_of(corpus: Path, file: str) -> str:
    """The item key / ``source`` the pipeline gives a manifest file under ``corpus``."""
    return os.path.normpath(os.path.join(str(corpus), file))


SMALL_DIM = 128
SMALL_SEQ = 128


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second embedding model, made here from the shipped one (nothing downloaded): MiniLM
    with a seeded Dense layer 384 → 128 on top and ``max_seq_length`` 128, saved to a
    folder as ``--model`` takes it. Its vectors differ in dimension, so an index or a
    search that used the default model instead would show."""
    import torch

    try:
        from sentence_transformers.sentence_transformer.modules import Dense
    except ImportError:  # sentence-transformers before 6
        from sentence_transformers.models import Dense

    from conveyor.docs.model import load_model

    model = load_model("cpu", backend="torch")  # a SentenceTransformer, to add a layer to
    torch.manual_seed(0)
    model.append(Dense(384, SMALL_DIM, bias=False))
    model.max_seq_length = SMALL_SEQ
    folder = tmp_path_factory.mktemp("models") / "small"
    model.save(str(folder))
    return folder
