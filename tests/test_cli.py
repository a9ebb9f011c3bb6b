"""The conveyor command end to end, as a user runs it: real subprocesses, real exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conveyor import open_run

PIPELINE = textwrap.dedent("""
    import os, time
    from conveyor import Pipeline

    pipe = Pipeline("cli")
    LOG = os.environ.get("CLI_TEST_LOG")

    @pipe.stage(cpus=0.5)
    def shout(word):
        if LOG:
            with open(LOG, "a") as fh:
                fh.write(word + "\\n")
        while word == os.environ.get("CLI_TEST_HOLD"):  # never returns: the run can't end
            time.sleep(0.05)
        if word == "bad":
            raise ValueError("bad word")
        return word.upper()

    broken = Pipeline("broken")

    @broken.stage
    def a(x):
        return x

    @broken.stage
    def b(x):
        return x
""")


@pytest.fixture
def module(tmp_path: Path) -> Path:
    path = tmp_path / "clipipe.py"
    path.write_text(PIPELINE)
    return path


def conveyor(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conveyor", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120, **kw)


def test_run_ok_exits_0_and_status_reads_the_run(module, run_dir):
    proc = conveyor("run", f"{module}:pipe", "hello", "world", "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert "shout" in proc.stdout
    status = conveyor("status", str(run_dir), "--json")
    assert status.returncode == 0
    data = json.loads(status.stdout)
    assert data["ok"] is True and data["pipeline"] == "cli"
    assert data["stages"]["shout"]["done"] == 2
    assert dict(open_run(run_dir).outputs("shout")) == {"hello": "HELLO", "world": "WORLD"}


def test_failed_items_exit_1_and_are_listed(module, run_dir):
    proc = conveyor("run", f"{module}:pipe", "fine", "bad", "--run-dir", str(run_dir), "-q")
    assert proc.returncode == 1
    assert "1 item(s) failed" in proc.stderr
    failures = conveyor("failures", str(run_dir))
    assert failures.returncode == 0
    assert "shout bad" in failures.stdout and "ValueError: bad word" in failures.stdout
    assert 'raise ValueError("bad word")' in failures.stdout
    rows = json.loads(conveyor("failures", str(run_dir), "--json").stdout)
    assert [(r["stage"], r["key"]) for r in rows] == [("shout", "bad")]


def test_inputs_file_and_module_colon_name_form(tmp_path, run_dir):
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("one\ntwo\n\nthree\n")
    (tmp_path / "clipipe2.py").write_text(PIPELINE)
    proc = conveyor("run", "clipipe2:pipe", "--inputs-file", str(inputs), "--run-dir",
                    str(run_dir), "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(k for k, _ in open_run(run_dir).outputs("shout")) == ["one", "three", "two"]


def test_definition_and_usage_errors_exit_2(module, run_dir, tmp_path):
    proc = conveyor("run", f"{module}:broken", "x", "--run-dir", str(run_dir))
    assert proc.returncode == 2 and "all have no upstream" in proc.stderr
    proc = conveyor("run", f"{module}:nothing", "x", "--run-dir", str(run_dir))
    assert proc.returncode == 2 and "not a conveyor Pipeline" in proc.stderr
    proc = conveyor("run", f"{module}:pipe", "x", "x", "--run-dir", str(run_dir))
    assert proc.returncode == 2 and "duplicate input key 'x'" in proc.stderr
    proc = conveyor("run", f"{module}:pipe", "x")  # no --run-dir
    assert proc.returncode == 2
    proc = conveyor("status", str(tmp_path / "missing"))
    assert proc.returncode == 2 and "not a conveyor run directory" in proc.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_cleanly_and_the_same_command_resumes(signum, module, run_dir, tmp_path):
    log = tmp_path / "calls.log"
    env = {"CLI_TEST_LOG": str(log)}
    words = [f"w{i:02d}" for i in range(40)]
    args = ["run", f"{module}:pipe", *words, "--run-dir", str(run_dir), "-q", "--cpus", "1"]
    # the last word's call never returns, so the run is still going when the signal comes
    proc = subprocess.Popen([sys.executable, "-m", "conveyor", *args],
                            env={**os.environ, **env, "CLI_TEST_HOLD": "w39"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while len(log.read_text().splitlines() if log.exists() else []) < 8:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err

    with open_run(run_dir) as result:
        done_before = {k for k, _ in result.outputs("shout")}
        assert result.counts["shout"]["running"] == 0  # nothing left half-owned
    assert 0 < len(done_before) < 40
    calls_before = len(log.read_text().splitlines())

    proc = conveyor(*args, env=env)
    assert proc.returncode == 0, proc.stderr
    second = log.read_text().splitlines()[calls_before:]
    assert not done_before & set(second), "finished items ran again"
    assert set(second) | done_before == set(words)
    assert open_run(run_dir).ok


def test_help_prints_each_paragraph_of_a_command_whole():
    import inspect as pyinspect

    from conveyor.cli.app import app

    for command in app.registered_commands:
        name = command.name or command.callback.__name__
        paragraphs = pyinspect.getdoc(command.callback).split("\n\n")
        # One source line per paragraph: typer versions differ in whether they keep a
        # paragraph's hard line breaks, and kept ones land mid-sentence.
        assert all("\n" not in p for p in paragraphs), (name, paragraphs)
        proc = conveyor(name, "--help", env={"COLUMNS": "250"})
        assert proc.returncode == 0, proc.stderr
        lines = [" ".join(line.split()) for line in proc.stdout.splitlines()]
        for paragraph in paragraphs:
            assert paragraph in lines, (name, paragraph, proc.stdout)
