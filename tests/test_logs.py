"""Logs kept to a size (conveyor.observe.logs): a log past its size moves to ``.1`` while
its writers, holding O_APPEND descriptors, go on writing at its start."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import conveyor.observe.logs
import conveyor.observe.metrics
from conveyor import Pipeline
from conveyor.observe.logs import trim

WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
for i in range(int(sys.argv[2])):
    os.write(fd, b"%06d %s\\n" % (i, b"." * 60))
    if i == int(sys.argv[2]) // 2:
        print("half", flush=True)
"""


def test_a_log_past_its_size_moves_to_dot_one_and_its_writer_goes_on_at_the_start(tmp_path):
    log = tmp_path / "g.log"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"a" * 99 + b"\n")
        assert not trim(log, limit=200)  # under its size: left alone
        assert not (tmp_path / "g.log.1").exists()
        os.write(fd, b"b" * 149 + b"\n")
        assert trim(log, limit=200)
        os.write(fd, b"after\n")
        assert (tmp_path / "g.log.1").read_bytes() == b"a" * 99 + b"\n" + b"b" * 149 + b"\n"
        assert log.read_bytes() == b"after\n"  # at the start: no hole of zeros before it
        os.write(fd, b"c" * 250 + b"\n")
        assert trim(log, limit=200)  # the piece before is replaced
        assert (tmp_path / "g.log.1").read_bytes() == b"after\n" + b"c" * 250 + b"\n"
        assert log.read_bytes() == b""
    finally:
        os.close(fd)
    assert not trim(tmp_path / "missing.log", limit=0)


def test_a_log_whose_copy_cannot_be_written_is_left_whole(tmp_path):
    """No room for the copy (here: a folder where it would go) leaves the log as it
    was, and says so, rather than failing the run whose driver trims it."""
    log = tmp_path / "g.log"
    log.write_bytes(b"x" * 300)
    (tmp_path / "g.log.1.part").mkdir()
    assert not trim(log, limit=200)
    assert log.read_bytes() == b"x" * 300 and not (tmp_path / "g.log.1").exists()


def test_a_log_trimmed_while_a_process_writes_to_it_stays_in_order(tmp_path):
    """A real writer goes on appending while the log is trimmed under it: what is kept
    is in the order written, nothing twice, no zeros, and the writer's last line is in
    the new log."""
    log, lines = tmp_path / "w.log", 40_000
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(log), str(lines)],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "half\n"  # the log holds half the lines by now
    assert trim(log, limit=1024)
    assert writer.wait() == 0
    kept = (tmp_path / "w.log.1").read_bytes() + log.read_bytes()
    assert b"\0" not in kept
    numbers = [int(line.split()[0]) for line in kept.splitlines()]
    assert numbers[0] == 0 and numbers[-1] == lines - 1
    assert all(a < b for a, b in zip(numbers, numbers[1:]))


def test_a_chatty_stage_s_log_is_kept_to_its_size(run_dir: Path, monkeypatch):
    """The driver trims a worker group's log at each tick (here every turn): a stage
    writing 400 KB leaves its latest lines and the piece before them, not all of it."""
    monkeypatch.setattr(conveyor.observe.logs, "LOG_BYTES", 8192)
    monkeypatch.setattr(conveyor.observe.metrics, "TICK_SECONDS", 0.0)
    pipe = Pipeline("logs")

    @pipe.stage
    def chatty(x):
        time.sleep(0.005)  # work: calls of a few items, so the driver turns between them
        print(f"{x} " + "." * 2000, flush=True)
        return x

    result = pipe.run([f"{i:04d}" for i in range(200)], run_dir=run_dir)
    assert result.ok
    last = max(result.ledger.rows("chatty"), key=lambda row: row["started"])["key"]
    log = run_dir / "logs" / "chatty.log"
    kept = (log.with_name("chatty.log.1").read_text() + log.read_text()).splitlines()
    assert kept[-1].startswith(f"{last} .")  # the latest output is kept
    assert len(kept) < 100  # of the 200 lines written
