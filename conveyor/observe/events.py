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
from typing import Any, Collection, Iterator

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


def last_run(run_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The events of the most recent run in a run directory, its ``run_start`` first,
    read as they are iterated (the runs before it cost a scan from the end, not their
    parsing)."""
    path = Path(run_dir) / rundir.EVENTS
    if not path.exists():
        return
    began = next((at for at, line in _backwards(path, {_mark("run_start")})
                  if (_parse(line) or {}).get("event") == "run_start"), None)
    if began is None:
        return
    with open(path, "rb") as fh:
        fh.seek(began)
        for event in map(_parse, fh):
            if event is not None:
                yield event


def latest(run_dir: str | os.PathLike[str], *names: str) -> dict[str, dict[str, Any]]:
    """The last event of each of ``names`` in the most recent run (``run_start``
    included), read from the end of the log: a status of a run that has gone on for
    a week (hundreds of MB of ticks) parses a few lines, not all of them."""
    path = Path(run_dir) / rundir.EVENTS
    found: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return found
    marks = {_mark(name) for name in {*names, "run_start"}}
    for _, line in _backwards(path, marks):
        event = _parse(line)
        if event is None or event["event"] in found:
            continue
        if event["event"] in names:
            found[event["event"]] = event
            if event["event"] != "run_start":
                marks.discard(_mark(event["event"]))  # the rest of the log: older ones
        if event["event"] == "run_start" or len(found) == len(names):
            break
    return found


SCAN_BYTES = 1 << 20  # the log is read from its end in pieces of this size


def _mark(name: str) -> bytes:
    """What a line holding event ``name`` surely holds (its name, quoted; a line that
    holds it for another reason is parsed and passed over)."""
    return orjson.dumps(name)


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:  # a torn last line
        return None


def _backwards(path: Path, marks: Collection[bytes]) -> Iterator[tuple[int, bytes]]:
    """The lines of ``path`` holding one of ``marks``, last first, with their offsets;
    a piece that holds none is passed over unsplit. ``marks`` is looked at afresh for
    each piece: the caller may drop the ones it has found."""
    with open(path, "rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        head = b""  # the start of the piece after this one: a line cut in two
        while end > 0:
            start = max(0, end - SCAN_BYTES)
            fh.seek(start)
            piece = fh.read(end - start) + head
            end = start
            # Up to its first newline (at the latest, the one that ends the head carried
            # over), the piece holds the end of a line begun earlier: carried on.
            cut = piece.find(b"\n") + 1 if start else 0
            head, piece = piece[:cut], piece[cut:]
            if not any(mark in piece for mark in marks):
                continue
            at = start + cut + len(piece)
            for line in reversed(piece.split(b"\n")):
                at -= len(line) + 1
                if line and any(mark in line for mark in marks):
                    yield at + 1, line
