"""Shared fixtures: the executors every contract test runs on, and helpers.

The ``ray`` executor runs on one real local Ray instance shared by the whole
session (starting Ray costs seconds; a Ray instance already running in the
process is used by the executor as it is). Its tests carry the ``ray`` marker:
``-m ray`` runs only them, ``-m 'not ray'`` skips them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

EXECUTORS = ["inline", "local", pytest.param("ray", marks=pytest.mark.ray)]
RAY_CPUS = 2  # small: CI machines have two cores
RAY_GPUS = 1  # declared, so gpus= stages schedule on a machine without one


@pytest.fixture(scope="session")
def ray_instance() -> Iterator[object]:
    """A local Ray instance for the session (skips where Ray is not installed)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=RAY_CPUS, num_gpus=RAY_GPUS, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR", configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(params=EXECUTORS)
def executor(request: pytest.FixtureRequest) -> str:
    """Each contract test runs once per executor."""
    if request.param == "ray":
        request.getfixturevalue("ray_instance")
    return request.param


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"
