"""The worker protocol: what a driver and its workers say to each other.

Shared by the local executor (messages over a socket pair, see
:mod:`conveyor.executors.local`) and the Ray executor (actor calls, see
:mod:`conveyor.executors.ray`)::

    driver ── (INIT, spec, sys.path, targets) ──▶ worker     once, first
    driver ── (TASKS, [claim tuples]) ─────────▶ worker     any number
    driver ── (STOP,) ─────────────────────────▶ worker     finish what you hold, exit
    driver ◀── (READY, pid, setup_s[, host]) ─── worker     setup() done, in setup_s seconds
    driver ◀── (SETUP_FAILED, error, traceback)─ worker     setup() or loading failed
    driver ◀── (RESULTS, [wire records], wrote_files, usage) ─ worker

``usage`` is what the calls behind those records cost (see
:data:`conveyor.worker.meter.Usage`): the driver compares it with what the
stages declared.

Records and claims cross as tuples of built-ins (:func:`to_wire`,
:func:`from_wire`); a worker notes the call it is in in a shared-memory
:class:`Slot`, which the driver reads when the worker dies, to blame the
right task. Thread counts and GPU visibility are set in a worker's
environment before it starts (:func:`pinned_env`), and torch's own thread
count once its setup imported torch (:func:`pin_torch`).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import struct
import sys
import tempfile
import time
from typing import Any, Mapping, NamedTuple

from ..ledger.base import Output, Record, Status
from ..store import Stored

# Message kinds: the first element of every message (plain strings: they pickle in C).
INIT, TASKS, STOP = "init", "tasks", "stop"
READY, SETUP_FAILED, RESULTS = "ready", "setup_failed", "results"

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "RAYON_NUM_THREADS")

SLOT = struct.Struct("qqqd")  # stage index, task id, tasks in the call, when it started


class Running(NamedTuple):
    """What a worker was doing: ``count`` tasks from ``item_id`` on, in chain stage ``stage``."""

    stage: int
    item_id: int
    count: int
    started: float


class Slot:
    """A worker's note of the call it is in, in memory shared with its driver.

    The worker writes it before each call and clears it after a run of
    calls; the driver reads it at any time, and after the worker died.
    """

    def __init__(self, fd: int) -> None:
        self._mm = mmap.mmap(fd, SLOT.size)

    def note(self, stage: int, item_id: int, count: int) -> None:
        self._mm[:SLOT.size] = SLOT.pack(stage, item_id, count, time.time())

    def read(self) -> Running | None:
        """The call in progress, or None between calls."""
        running = Running(*SLOT.unpack(self._mm[:SLOT.size]))
        return None if running.item_id < 0 else running

    @staticmethod
    def make() -> tuple["Slot", int]:
        """A new slot and the file descriptor to hand to the worker (cleared: idle)."""
        fh = tempfile.TemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        fd = os.dup(fh.fileno())
        fh.close()
        os.ftruncate(fd, SLOT.size)
        slot = Slot(fd)
        slot.note(-1, -1, 0)
        return slot, fd


def pinned_env(threads: int, devices: tuple[str, ...], extra: Mapping[str, str]
               ) -> dict[str, str]:
    """Environment variables that pin a worker's threads and GPU visibility."""
    env = {var: str(threads) for var in THREAD_VARS}
    env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    env["CONVEYOR_THREADS"] = str(threads)
    if threads == 1:
        env["TOKENIZERS_PARALLELISM"] = "false"
    env.update(extra)
    return env


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the driver dies (no orphans)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the driver died before we got here
        os._exit(1)


def pin_torch(threads: int) -> None:
    """Pin torch's thread count to the stage's ``threads``, where its setup imported torch."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


Wire = tuple[Any, ...]


def to_wire(records: list[Record]) -> list[Wire]:
    """Records as tuples of built-ins, to send between processes.

    Pickling named tuples and enums calls back into Python for each object
    (about 6 µs per record here); plain tuples pickle in C, about 3× cheaper
    to send and to receive.
    """
    return [(r.stage, r.key, r.item_id, r.status.value, r.attempt, r.started, r.ended,
             [(o.key, *o.value, o.targets, o.gathers) for o in r.outputs], r.error,
             r.traceback, r.retry_at, r.worker, r.fatal, r.retryable) for r in records]


def from_wire(rows: list[Wire]) -> list[Record]:
    """The records :func:`to_wire` sent.

    Built with ``tuple.__new__``: a named tuple's own constructor is Python
    code, and this runs for every row of a run.
    """
    status, new = _STATUS, tuple.__new__
    return [new(Record, (stage, key, item_id, status[st], attempt, started, ended,
                         [new(Output, (k, new(Stored, (data, ref, digest, size)), targets,
                                       gathers))
                          for k, data, ref, digest, size, targets, gathers in outputs], *rest))
            for stage, key, item_id, st, attempt, started, ended, outputs, *rest in rows]


_STATUS = {s.value: s for s in Status}
