"""Detached runs end to end, as a user drives them: ``--detach``, ``status``, ``attach``,
``stop``, a ``kill -9`` of the detached driver and a resume; ``pipe.run(detach=True)``.

The pipeline (tests/pipelines/gated.py) holds its ``held...`` items until the
test opens a gate file, so each step waits on what the run did, never on time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import psutil
import pytest

from conveyor import RunLockedError, open_run, runstate

PIPELINES = Path(__file__).parent / "pipelines"
GATED = f"{PIPELINES / 'gated.py'}:pipe"
WORDS = ["a", "b", "held1", "held2"]
ALL_OUT = {"a": "A!", "b": "B!", "held1": "HELD1!", "held2": "HELD2!"}


@pytest.fixture
def gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "gate"
    folder.mkdir()
    monkeypatch.setenv("GATE_DIR", str(folder))
    yield folder
    live = runstate.driver(tmp_path / "run")  # a failed test leaves no driver behind
    if live is not None:
        os.kill(live["pid"], signal.SIGKILL)


def conveyor(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conveyor", *args], capture_output=True,
                          text=True, timeout=120, **kw)


def flat(text: str) -> str:
    """Text as one line: rich wraps what it prints to the terminal's width, inside the
    box it draws around an error (the driver's log has typer's)."""
    return " ".join(text.translate(str.maketrans("", "", "│╭╮╰╯─")).split())


def eventually(check: Callable[[], object], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def status(run_dir: Path) -> dict:
    proc = conveyor("status", str(run_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def state(run_dir: Path) -> dict:
    return status(run_dir)["state"]


def held_in_flight(run_dir: Path, gate: Path) -> bool:
    """a and b are done and a held item is in the gate stage, waiting."""
    if not (run_dir / "ledger.db").exists():
        return False
    with open_run(run_dir) as result:
        done = result.counts["gate"]["done"] if "gate" in result.stages else 0
    return done == 2 and any(key.startswith("held") for key in calls(gate, "gate"))


def ran_once(gate: Path) -> None:
    """The items recorded done before a stop or a kill did not run again."""
    for stage in ("first", "gate"):
        assert calls(gate, stage).count("a") == calls(gate, stage).count("b") == 1


def calls(gate: Path, stage: str) -> list[str]:
    log = gate / "calls.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [line.split()[1] for line in lines if line.split()[0] == stage]


def worker_pids(gate: Path) -> set[int]:
    return {int(line.split()[2]) for line in (gate / "calls.log").read_text().splitlines()}


def detach(run_dir: Path, *extra: str) -> int:
    proc = conveyor("run", GATED, *WORDS, "--run-dir", str(run_dir), "--cpus", "2", *extra,
                    "--detach")
    assert proc.returncode == 0, proc.stderr
    found = re.search(r"detached: (\S+) \(driver pid (\d+) on (\S+)\)", proc.stdout)
    assert found, proc.stdout
    assert Path(found[1]) == run_dir and found[3] == socket.gethostname()
    return int(found[2])


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def outputs(run_dir: Path) -> dict[str, str]:
    with open_run(run_dir) as result:
        return dict(result.outputs("gate"))


def test_detach_status_attach_stop_and_resume(tmp_path, gate):
    run_dir = tmp_path / "run"
    pid = detach(run_dir)
    eventually(lambda: held_in_flight(run_dir, gate), "a and b done, the held items waiting")
    found = state(run_dir)
    assert found["state"] == "running" and found["pid"] == pid and found["detached"]
    assert found["host"] == socket.gethostname() and found["exit_code"] is None
    text = flat(conveyor("status", str(run_dir)).stdout)
    assert text.startswith(f"running (detached, pid {pid} on {socket.gethostname()} since ")

    # a second driver on the same run directory is refused, naming the first
    again = conveyor("run", GATED, *WORDS, "--run-dir", str(run_dir), "--detach")
    assert again.returncode == 2 and f"in use by another driver (pid {pid}" in flat(again.stderr)

    # Ctrl-C in attach leaves the run running
    watcher = subprocess.Popen([sys.executable, "-m", "conveyor", "attach", str(run_dir)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    eventually(lambda: any(f.path.endswith("ledger.db")
                           for f in psutil.Process(watcher.pid).open_files()),
               "attach follows the run's ledger")
    watcher.send_signal(signal.SIGINT)
    _, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0 and "detached; the run goes on" in flat(err)
    assert state(run_dir)["state"] == "running"

    stopped = conveyor("stop", str(run_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert gone(pid)  # stop returns once the driver has exited
    found = state(run_dir)
    assert found["state"] == "stopped" and found["exit_code"] == 130
    assert conveyor("status", str(run_dir)).stdout.startswith("stopped")
    assert "run interrupted by SIGTERM" in (run_dir / "driver.log").read_text()
    assert outputs(run_dir) == {"a": "A!", "b": "B!"}  # what finished is kept
    assert conveyor("stop", str(run_dir)).returncode == 0  # nothing to stop: says so

    # the same command resumes; attach follows it to the end and exits with its code
    held = len(calls(gate, "gate"))
    pid = detach(run_dir)
    eventually(lambda: len(calls(gate, "gate")) > held, "the held items run again")
    (gate / "open").touch()
    attached = conveyor("attach", str(run_dir))
    assert attached.returncode == 0, attached.stderr
    assert "finished ok" in flat(attached.stderr)
    assert gone(pid)
    found = state(run_dir)
    assert found["state"] == "finished" and found["ok"] and found["exit_code"] == 0
    assert outputs(run_dir) == ALL_OUT
    ran_once(gate)
    # attach on a finished run returns its code at once
    assert conveyor("attach", str(run_dir), "--quiet").returncode == 0


def test_a_detached_driver_killed_with_sigkill_is_crashed_and_the_same_command_resumes(
        tmp_path, gate):
    run_dir = tmp_path / "run"
    pid = detach(run_dir)
    eventually(lambda: held_in_flight(run_dir, gate), "a and b done, the held items waiting")
    workers = worker_pids(gate)
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: gone(pid), "the driver is gone")
    eventually(lambda: all(gone(w) for w in workers), "its workers died with it")
    found = state(run_dir)
    assert found["state"] == "crashed" and found["pid"] == pid and found["exit_code"] == 130
    assert "crashed (driver gone)" in flat(conveyor("status", str(run_dir)).stdout)
    assert conveyor("attach", str(run_dir), "--quiet").returncode == 130

    (gate / "open").touch()
    resumed = conveyor("run", GATED, *WORDS, "--run-dir", str(run_dir), "--cpus", "2",
                       "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert outputs(run_dir) == ALL_OUT
    ran_once(gate)  # only the items in flight at the kill ran again
    assert state(run_dir)["state"] == "finished"


def test_pipe_run_detach_returns_a_handle_and_open_run_gives_the_same(tmp_path, gate,
                                                                     monkeypatch):
    monkeypatch.syspath_prepend(str(PIPELINES))  # the detached driver imports it the same way
    import gated
    run_dir = tmp_path / "run"
    handle = gated.pipe.run(WORDS, run_dir=run_dir, cpus=2, detach=True)
    assert handle.run_dir == run_dir and handle.pid != os.getpid()
    assert handle.status()["state"] == "running"
    eventually(lambda: held_in_flight(run_dir, gate), "a and b done, the held items waiting")
    with pytest.raises(RunLockedError, match=f"pid {handle.pid}"):
        gated.pipe.run(WORDS, run_dir=run_dir, detach=True)
    with pytest.raises(TimeoutError):
        handle.wait(timeout=0.2)

    with open_run(run_dir) as other:  # as from any process
        assert other.pid == handle.pid and other.status()["state"] == "running"
        assert other.stop() == 130
    assert handle.status()["state"] == "stopped" and gone(handle.pid)

    handle = gated.pipe.run(None, run_dir=run_dir, cpus=2, detach=True)  # resume
    (gate / "open").touch()
    assert handle.wait() == 0
    assert handle.status()["state"] == "finished"
    assert dict(handle.outputs("gate")) == ALL_OUT


def test_pipe_run_detach_of_a_pipeline_defined_in_a_script(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        "import sys\n"
        "from conveyor import Pipeline\n"
        "pipe = Pipeline('script')\n"
        "@pipe.stage\n"
        "def double(x):\n"
        "    return x * 2\n"
        "handle = pipe.run([1, 2, 3], run_dir=sys.argv[1], detach=True)\n"
        "print(handle.pid)\n")
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(script), str(run_dir)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # the script is gone; its pipeline runs on, by value
    with open_run(run_dir) as result:
        assert result.pid == int(proc.stdout)
        assert result.wait() == 0
        assert sorted(v for _, v in result.outputs("double")) == [2, 4, 6]


def test_a_detached_run_that_cannot_start_says_why(tmp_path):
    run_dir = tmp_path / "run"
    proc = conveyor("run", f"{PIPELINES / 'gated.py'}:nothing", "x", "--run-dir", str(run_dir),
                    "--detach")
    assert proc.returncode == 2
    assert "the detached run ended at once (exit 2)" in flat(proc.stderr)
    assert "conveyor Pipeline (got NoneType)" in flat(proc.stderr)  # from driver.log


@pytest.mark.ray
def test_a_detached_run_on_ray(tmp_path, gate):
    pytest.importorskip("ray")
    run_dir = tmp_path / "run"
    pid = detach(run_dir, "--executor", "ray")
    eventually(lambda: held_in_flight(run_dir, gate), "a and b done, the held items waiting",
               timeout=180)
    assert state(run_dir)["pid"] == pid
    (gate / "open").touch()
    attached = conveyor("attach", str(run_dir), "--quiet")
    assert attached.returncode == 0, attached.stderr
    assert outputs(run_dir) == ALL_OUT
