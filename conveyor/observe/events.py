"""The run's event stream: ``<run_dir>/events.jsonl``, one JSON object per line.

The driver appends events (run start and end, workers starting and exiting
with their resources, failures) as they happen and flushes them with each
ledger commit. Views (status, report, benchmarks, tests) read the file; they
never need the driver's memory. Every event has ``t`` (unix time) and ``event``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterator

import orjson

from .. import rundir


class EventLog:
    """Appends events to a run's ``events.jsonl``."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.path = Path(run_dir) / rundir.EVENTS
        self._fh = open(self.path, "ab")
        self._buffer: list[bytes] = []

    def emit(self, event: str, **fields: Any) -> None:
        record = {"t": round(time.time(), 6), "event": event, **fields}
        self._buffer.append(orjson.dumps(record) + b"\n")

    def flush(self) -> None:
        if self._buffer:
            self._fh.write(b"".join(self._buffer))
            self._fh.flush()
            self._buffer.clear()

    def close(self) -> None:
        self.flush()
        self._fh.close()


def read_events(run_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The events of a run, oldest first (a torn last line is skipped)."""
    path = Path(run_dir) / rundir.EVENTS
    if not path.exists():
        return
    with open(path, "rb") as fh:
        for line in fh:
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError:
                continue


def last_run(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The events of the most recent run in a run directory."""
    events = list(read_events(run_dir))
    starts = [i for i, e in enumerate(events) if e["event"] == "run_start"]
    return events[starts[-1]:] if starts else []
