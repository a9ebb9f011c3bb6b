"""Logs kept to a size: a chatty stage in a week-long run must not fill the disk.

Every worker of a group appends its stdout and stderr to ``logs/GROUP.log``, and a
detached driver its own to ``driver.log``, through a descriptor opened with O_APPEND
(native code writes there too, so the file cannot be swapped under it). When a log
passes :data:`LOG_BYTES`, the driver copies it to ``NAME.log.1`` (replacing the one
before) and truncates it: the writers' next writes land at the new end, as O_APPEND
writes do. A log then keeps at most about twice :data:`LOG_BYTES`, the latest output
and the piece before it. A write that lands between the copy's last read and the
truncation is lost: the copy reads on to the file's end before truncating, so that
window is microseconds. Item failures keep their tracebacks in the ledger either way.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .. import rundir

LOG_BYTES = 64 * 2**20


def trim_all(run_dir: Path) -> list[Path]:
    """Trim every log of the run directory that has grown past :data:`LOG_BYTES`;
    the logs trimmed."""
    logs = [*sorted((run_dir / rundir.LOGS).glob("*.log")), run_dir / rundir.DRIVER_LOG]
    return [log for log in logs if trim(log)]


def trim(log: Path, limit: int | None = None) -> bool:
    """Move ``log``'s content to ``log.1`` if it is over ``limit`` bytes (default
    :data:`LOG_BYTES`); whether it did."""
    try:
        if log.stat().st_size <= (LOG_BYTES if limit is None else limit):
            return False
    except FileNotFoundError:
        return False
    previous = log.with_name(log.name + ".1")
    part = log.with_name(log.name + ".1.part")
    try:
        with open(log, "rb") as source, open(part, "wb") as copy:
            shutil.copyfileobj(source, copy)
            while chunk := source.read(1 << 20):  # what was written during the copy
                copy.write(chunk)
            copy.flush()  # a full disk fails here, before anything is truncated
            os.truncate(log, 0)
    except OSError:  # no room for the copy: the log stays whole, and the run goes on
        if part.is_file():
            part.unlink()
        return False
    os.replace(part, previous)
    return True
