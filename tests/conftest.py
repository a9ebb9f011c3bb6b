"""Shared fixtures: the executors every contract test runs on, and helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

EXECUTORS = ["inline", "local"]


@pytest.fixture(params=EXECUTORS)
def executor(request: pytest.FixtureRequest) -> str:
    """Each contract test runs once per executor."""
    return request.param


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


