"""Reruns as a user does them from the shell: change code, force a stage, retry failures.

Each stage logs its calls to $RERUN_LOG, so what ran again is visible.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conveyor import open_run
from conveyor import rundir

MODULE = textwrap.dedent("""
    import os
    from conveyor import Pipeline

    pipe = Pipeline("rerun")

    def log(stage, x):
        with open(os.environ["RERUN_LOG"], "a") as fh:
            fh.write(f"{stage} {x}\\n")

    @pipe.stage
    def a(x):
        log("a", x)
        return x

    @pipe.stage(after=a)
    def b(x):
        log("b", x)
        if os.path.exists(os.environ.get("FAIL_ON", "/nonexistent")) and x == "w2":
            raise RuntimeError("w2 is not ready")
        return x + "-B1"

    @pipe.stage(after=b)
    def c(x):
        log("c", x)
        return x + "!"
""")


@pytest.fixture
def project(tmp_path: Path):
    (tmp_path / "rerunpipe.py").write_text(MODULE)
    log = tmp_path / "calls.log"
    env = {**os.environ, "RERUN_LOG": str(log), "FAIL_ON": str(tmp_path / "fail")}

    def conveyor(*args: str, cwd: Path = tmp_path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=120)

    def calls() -> list[str]:
        lines = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return sorted(lines)

    return tmp_path, conveyor, calls


def run_args(*words: str) -> list[str]:
    return ["run", "rerunpipe:pipe", *words, "--run-dir", "run", "-q"]


def test_changing_a_stage_recomputes_it_and_below_only(project):
    root, conveyor, calls = project
    assert conveyor(*run_args("w1", "w2")).returncode == 0
    assert calls() == ["a w1", "a w2", "b w1", "b w2", "c w1-B1", "c w2-B1"]
    assert conveyor(*run_args("w1", "w2")).returncode == 0
    assert calls() == []  # everything reused

    (root / "rerunpipe.py").write_text(MODULE.replace('x + "-B1"', 'x + "-B2"'))
    plan = json.loads(conveyor("status", "run", "--plan", "--json").stdout)
    assert [(p["stage"], p["action"], p["why"]) for p in plan] == [
        ("a", "reuse", "unchanged"), ("b", "recompute", "its code or parameters changed"),
        ("c", "recompute", "below a changed stage")]
    assert conveyor(*run_args("w1", "w2")).returncode == 0
    assert calls() == ["b w1", "b w2", "c w1-B2", "c w2-B2"]  # a was not run again
    assert dict(open_run(root / "run").outputs("c")) == {"w1": "w1-B2!", "w2": "w2-B2!"}


def test_force_recomputes_a_stage_and_below(project):
    root, conveyor, calls = project
    conveyor(*run_args("w1"))
    calls()
    assert conveyor(*run_args("w1", "--force", "b")).returncode == 0
    assert calls() == ["b w1", "c w1-B1"]


def test_retry_reruns_failed_items_only(project):
    root, conveyor, calls = project
    (root / "fail").write_text("")
    proc = conveyor(*run_args("w1", "w2", "w3"))
    assert proc.returncode == 1
    assert "b w2" in calls()
    failures = conveyor("failures", "run")
    assert "w2 is not ready" in failures.stdout
    (root / "fail").unlink()
    proc = conveyor("retry", "run", "--stage", "b", "-q")
    assert proc.returncode == 0, proc.stderr
    assert calls() == ["b w2", "c w2-B1"]  # only the failed item, and what follows it
    assert open_run(root / "run").ok


def test_inputs_no_longer_given_are_reported_and_kept(project):
    root, conveyor, calls = project
    conveyor(*run_args("w1", "w2"))
    proc = conveyor(*run_args("w1"))
    assert proc.returncode == 0
    assert "1 input(s) recorded in this run directory were not given" in proc.stderr
    assert "w2" in proc.stderr
    assert sorted(k for k, _ in open_run(root / "run").outputs("c")) == ["w1", "w2"]


def plan_of(conveyor, run_dir: Path, cwd: Path) -> list[tuple[str, str, int]]:
    proc = conveyor("status", str(run_dir), "--plan", "--json", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return [(p["stage"], p["action"], p["failed"]) for p in json.loads(proc.stdout)]


@pytest.mark.parametrize("given", ["module", "path"])
def test_plan_and_retry_load_the_recorded_pipeline_from_anywhere(given, project, tmp_path_factory):
    root, conveyor, calls = project
    (root / "fail").write_text("")
    launch, elsewhere = tmp_path_factory.mktemp("launch"), tmp_path_factory.mktemp("elsewhere")
    if given == "module":  # imported from the working directory
        launch, ref = root, "rerunpipe:pipe"
    else:  # dir/file.py:pipe, from a working directory that is not dir
        ref = os.path.relpath(root / "rerunpipe.py", launch) + ":pipe"
    run_dir = root / "run"
    proc = conveyor("run", ref, "w1", "w2", "--run-dir", str(run_dir), "-q", cwd=launch)
    assert proc.returncode == 1, proc.stderr
    calls()
    assert plan_of(conveyor, run_dir, elsewhere) == [("a", "reuse", 0), ("b", "reuse", 1),
                                                     ("c", "reuse", 0)]
    (root / "fail").unlink()
    proc = conveyor("retry", str(run_dir), "-q", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert calls() == ["b w2", "c w2-B1"]


def test_a_run_dir_that_recorded_the_older_ref_and_cwd_still_plans(project, tmp_path_factory):
    root, conveyor, calls = project
    assert conveyor(*run_args("w1")).returncode == 0
    with sqlite3.connect(rundir.ledger(root / "run")) as db:  # as runs recorded it before
        db.execute("DELETE FROM meta WHERE name = 'pipeline_origin'")
        db.executemany("INSERT INTO meta VALUES (?, ?)",
                       [("pipeline_ref", "rerunpipe:pipe"), ("cwd", str(root))])
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    assert plan_of(conveyor, root / "run", elsewhere) == [("a", "reuse", 0), ("b", "reuse", 0),
                                                          ("c", "reuse", 0)]
