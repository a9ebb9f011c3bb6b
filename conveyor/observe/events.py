"""The run's event stream: ``<run_dir>/events.jsonl``, one JSON object per line.

The driver appends events (run start and end, workers starting and exiting
with their resources, failures) as they happen and flushes them with each
ledger commit. Views (status, report, benchmarks, tests) read the file; they
never need the driver's memory. Every event has ``t`` (unix time) and ``event``.

A busy week writes GBs of it, so readers take only what they need:
``events.last`` says where the last run began; :func:`latest` reads a few lines
from the ends of that run, :func:`last_run` streams it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Collection, Iterator

import orjson

from .. import rundir


class EventLog:
    """Appends events to a run's ``events.jsonl``; a ``run_start`` also says where it
    lands in ``events.last``, so that readers find the last run without a scan."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.path = Path(run_dir) / rundir.EVENTS
        self._last = Path(run_dir) / rundir.EVENTS_LAST
        self._fh = open(self.path, "ab")
        if self._fh.tell() and _last_byte(self.path) != b"\n":
            self._fh.write(b"\n")  # a killed driver's torn line: ours start on their own
        self._buffer: list[bytes] = []

    def emit(self, event: str, **fields: Any) -> None:
        record = {"t": round(time.time(), 6), "event": event, **fields}
        line = orjson.dumps(record) + b"\n"
        if event == "run_start":  # before the line is written: never past a later start
            at = self._fh.tell() + sum(map(len, self._buffer))
            part = self._last.with_name(self._last.name + ".part")
            part.write_bytes(orjson.dumps({"offset": at, "t": record["t"]}))
            os.replace(part, self._last)
        self._buffer.append(line)

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
    read as they are iterated (the runs before it are not parsed)."""
    path = Path(run_dir) / rundir.EVENTS
    began = _last_start(path)
    if began is None:
        return
    with open(path, "rb") as fh:
        fh.seek(began[0])
        for event in map(_parse, fh):
            if event is not None:
                yield event


def latest(run_dir: str | os.PathLike[str], *names: str) -> dict[str, dict[str, Any]]:
    """The last event of each of ``names`` in the most recent run (``run_start``
    included), read from the end of the log back to the run's start: a status of a run
    that has gone on for a week (GBs of ticks and leases) parses a few lines."""
    path = Path(run_dir) / rundir.EVENTS
    began = _last_start(path)
    if began is None:
        return {}
    found = {"run_start": began[1]} if "run_start" in names else {}
    marks = {_mark(name) for name in names if name != "run_start"}
    for _, line in _backwards(path, marks, floor=began[0]):
        event = _parse(line)
        if event is not None and event["event"] in names and event["event"] not in found:
            found[event["event"]] = event
            marks.discard(_mark(event["event"]))  # the rest of the log: older ones
            if len(found) == len(names):
                break
    return found


def _last_start(path: Path) -> tuple[int, dict[str, Any]] | None:
    """Where the last run began in the log, and its ``run_start``: as ``events.last``
    says, if the line there is that start; else the last one found from the end (a run
    directory of an older version, or a driver killed between the two writes)."""
    if not path.exists():
        return None
    try:
        said = orjson.loads((path.parent / rundir.EVENTS_LAST).read_bytes())
        with open(path, "rb") as fh:
            fh.seek(said["offset"])
            event = _parse(fh.readline())
        if event is not None and event["event"] == "run_start" and event["t"] == said["t"]:
            return said["offset"], event
    except (OSError, ValueError, KeyError, TypeError):  # JSONDecodeError is a ValueError
        pass
    for at, line in _backwards(path, {_mark("run_start")}):
        event = _parse(line)
        if event is not None and event["event"] == "run_start":
            return at, event
    return None


SCAN_BYTES = 1 << 20  # the log is read from its end in pieces of this size


def _mark(name: str) -> bytes:
    """What a line holding event ``name`` surely holds (its name, quoted; a line that
    holds it for another reason is parsed and passed over)."""
    return orjson.dumps(name)


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1)


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:  # a torn last line
        return None


def _backwards(path: Path, marks: Collection[bytes], floor: int = 0
               ) -> Iterator[tuple[int, bytes]]:
    """The lines of ``path`` from ``floor`` (a line's start) holding one of ``marks``,
    last first, with their offsets; a piece that holds none is passed over unsplit.
    ``marks`` is looked at afresh for each piece: the caller may drop what it found."""
    with open(path, "rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        head = b""  # the start of the piece after this one: a line cut in two
        while end > floor and marks:
            start = max(floor, end - SCAN_BYTES)
            fh.seek(start)
            piece = fh.read(end - start) + head
            end = start
            # Up to its first newline (at the latest, the one that ends the head carried
            # over), the piece holds the end of a line begun earlier: carried on.
            cut = piece.find(b"\n") + 1 if start > floor else 0
            head, piece = piece[:cut], piece[cut:]
            if not any(mark in piece for mark in marks):
                continue
            at = start + cut + len(piece)
            for line in reversed(piece.split(b"\n")):
                at -= len(line) + 1
                if line and any(mark in line for mark in marks):
                    yield at + 1, line
