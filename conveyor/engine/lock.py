"""One driver per run directory.

The lock is an ``flock`` on ``<run_dir>/lock``, which the kernel releases once
its holder dies, however it dies: a lock left by a ``kill -9`` is never stale.
"Once", not "the moment": a child the holder was forking when it died holds a
copy of the descriptor until it execs, so a driver that finds the recorded
holder dead waits a few seconds for the lock before it refuses. The file also
records who holds it (pid, host, since) so a refused second driver can say whom
it is waiting for, and a new holder can say whose lock it took over.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from .. import rundir
from ..errors import RunLockedError

DEAD_HOLDER_WAIT = 5.0  # seconds a dead holder's descendants may keep the lock


class RunLock:
    """Hold ``<run_dir>/lock`` for the life of a ``with`` block."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.path = Path(run_dir) / rundir.LOCK
        self._fd: int | None = None
        self.previous: dict[str, Any] | None = None  # a dead holder's record, if any

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            if not (_dead(holder) and _wait_for(fd, DEAD_HOLDER_WAIT)):
                os.close(fd)
                raise RunLockedError(
                    f"run directory {self.path.parent} is in use by another driver "
                    f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')} since "
                    f"{holder.get('since', '?')}); wait for it or stop it first") from None
        self.previous = _read(fd) or None
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _dead(holder: dict[str, Any]) -> bool:
    """Whether the recorded holder is a process of this host that no longer runs."""
    import psutil

    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_for(fd: int, seconds: float) -> bool:
    """Take the lock on ``fd`` within ``seconds``; False if it stays held."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
    return False


def _read(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 4096, 0)
        return json.loads(data) if data else {}
    except (OSError, ValueError):
        return {}
