"""A run directory written before the floor plan moved modules still opens, reports,
plans and resumes.

tests/fixtures/legacy-run.tar.gz holds the run dir of tests/pipelines/legacy.py
made by conveyor at commit 2cd2187 (three words, ``check`` failed on ``w3``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conveyor import open_run
from helpers import read_log
from pipelines import legacy

FIXTURE = Path(__file__).parent / "fixtures" / "legacy-run.tar.gz"
PIPELINES = str(Path(__file__).parent / "pipelines")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / "run"


def conveyor(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([PIPELINES, *sys.path])}
    return subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_it_opens_with_its_counts_and_failures(run_dir):
    with open_run(run_dir) as result:
        assert result.pipeline == "legacy"
        assert {s: (c["done"], c["failed"]) for s, c in result.counts.items()} == {
            "upper": (3, 0), "check": (2, 1), "total": (1, 0)}
        (failure,) = result.failures()
        assert (failure["stage"], failure["key"], failure["error"]) == (
            "check", "w3", "ValueError: W3 is not ready")
        assert result.output("total") == 4


def test_it_reports_and_plans(run_dir, tmp_path):
    report = conveyor("report", str(run_dir), "--json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert [s["stage"] for s in json.loads(report.stdout)["stages"]] == ["upper", "check",
                                                                        "total"]
    plan = conveyor("status", str(run_dir), "--plan", "--json", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert [(p["stage"], p["action"]) for p in json.loads(plan.stdout)] == [
        ("upper", "reuse"), ("check", "reuse"), ("total", "reuse")]


def test_it_resumes_running_only_what_failed_and_what_follows(run_dir, tmp_path, monkeypatch):
    log = tmp_path / "calls.log"
    monkeypatch.setenv("LEGACY_LOG", str(log))
    monkeypatch.setenv("LEGACY_FIXED", "1")
    result = legacy.pipe.run(None, run_dir=run_dir)
    assert result.ok and result.output("total") == 6
    assert sorted(read_log(log)) == ["check W3", "total total"]
