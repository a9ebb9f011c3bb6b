"""Importing conveyor stays light: no Ray, torch or FastAPI until a feature needs them."""

import subprocess
import sys


def test_import_conveyor_imports_no_heavy_dependency():
    code = ("import sys, conveyor, conveyor.cli.app; "
            "print(sorted(m for m in ('ray', 'torch', 'fastapi', 'sentence_transformers') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_a_worker_imports_none_of_the_drivers_modules():
    # A worker process (local or a Ray actor) imports these before its stage's first
    # item; the driver's modules (pipeline, ledger, engine, reports) would only slow it.
    driver = ("conveyor.pipeline", "conveyor.result", "conveyor.engine", "conveyor.executors",
              "conveyor.ledger.sqlite", "conveyor.ledger.memory", "conveyor.observe")
    code = ("import sys, conveyor.worker.process, conveyor.worker.actor; "
            f"print(sorted(m for m in {driver!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_the_packages_driver_names_load_on_first_use():
    code = ("import sys, conveyor; loaded = 'conveyor.pipeline' in sys.modules; "
            "from conveyor import Pipeline, RunResult, open_run; "
            "print(loaded, Pipeline.__module__, RunResult.__module__, open_run.__module__, "
            "'Pipeline' in dir(conveyor), hasattr(conveyor, 'Pipelines'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", "conveyor.pipeline", "conveyor.result",
                                  "conveyor.result", "True", "False"]
