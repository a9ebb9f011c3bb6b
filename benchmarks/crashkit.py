"""crashkit: what kill tests share, to watch a driver's commits and to see every execution.

:func:`syncing_wal` looks through ``/proc/PID/task/*/syscall`` for a thread of the
driver blocked in the fsync of its ledger's WAL (a commit written but not yet
acknowledged), so a kill can land there. :func:`log_executions` appends one line
"stage key pid" per execution to a log with ``O_APPEND``, one write per call, so
lines from several workers never mix and each execution leaves its line, the
killed ones included. Used by benchmarks/killdriver.py and the driver-kill tests
(tests/helpers.py, tests/pipelines/), which add this folder to ``sys.path``.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from pathlib import Path

# fsync and fdatasync, by machine: SQLite syncs the WAL with one of them on each commit
WAL_SYNCS = {"x86_64": {74, 75}, "aarch64": {82, 83}}.get(platform.machine(), set())


def unwatchable() -> str | None:
    """Why :func:`syncing_wal` cannot see this machine's syncs, or None where it can."""
    if WAL_SYNCS and Path("/proc/self/task").is_dir():
        return None
    return "needs Linux's /proc/PID/task/*/syscall on x86_64 or aarch64"


def syncing_wal(pid: int) -> bool:
    """Whether a thread of ``pid`` is blocked in an fsync of the ledger's WAL right now."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall") as fh:
                call = fh.read().split()
            if len(call) < 2 or not call[0].isdigit() or int(call[0]) not in WAL_SYNCS:
                continue
            if os.readlink(f"/proc/{pid}/fd/{int(call[1], 16)}").endswith("ledger.db-wal"):
                return True
        except OSError:  # the thread or the descriptor went away meanwhile
            continue
    return False


def log_executions(log: str | os.PathLike[str], stage: str, keys: Iterable[str]) -> None:
    """Append "stage key pid" for each of ``keys`` to ``log``, in one O_APPEND write."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, "".join(f"{stage} {key} {os.getpid()}\n" for key in keys).encode())
    finally:
        os.close(fd)
