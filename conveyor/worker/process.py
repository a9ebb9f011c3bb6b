"""The worker process: ``python -m conveyor.worker.process FD SLOT``.

::

    driver ──(INIT, spec) (TASKS, [...]) (STOP,)──▶ socket ──▶ reader thread
                                                                 │ receives at once
                                                                 ▼
                                                             loader thread
                                                                 │ decodes inputs,
                                                                 │ runs load(value)
                                                                 ▼ ahead of time
    driver ◀──(READY, ...) (RESULTS, ...) (SETUP_FAILED, ...)── main thread
                                                             (setup once, then
                                                              calls the stage)

The messages are those of :mod:`conveyor.worker.protocol`.
The main thread owns the stage: it runs ``setup()`` once, then takes loaded
tasks from the inbox (noting in a small shared-memory *slot* which task it is
on, which the driver reads if the worker dies, so the right task is blamed),
calls the stage (assembling batches for batch stages, flushed after a short
deadline when input runs dry) and sends outcomes back in
chunks. The loader thread is the prefetcher: while the stage computes, it
reads and decodes the next tasks' inputs, so a GPU stage never waits for
deserialisation, and runs a class stage's own ``load(value)`` on them (the
stage's ``prefetch`` batches ahead, no more: loaded values such as decoded
images can be large), so reading its files overlaps its calls. The reader
thread only receives, whatever the inbox holds: a driver blocked sending
tasks to this worker cannot read its results, so a reader that waited for
room while the main thread waited to send results would stop both for good
(the driver bounds what it sends by its window). Thread counts and
``CUDA_VISIBLE_DEVICES`` are set in the environment by the driver before this process starts (see
:func:`~conveyor.worker.protocol.pinned_env`), so native libraries see them
when they load.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from ..envs import LABEL_VAR
from ..ledger.base import Claim
from . import shipping
from .inbox import Inbox
from .meter import peak_rss
from .protocol import (
    INIT,
    READY,
    RESULTS,
    SETUP_FAILED,
    STOP,
    TASKS,
    Slot,
    die_with_parent,
    pin_torch,
    to_wire,
)
from .runner import GroupRunner

FLUSH_SECONDS = 0.1  # the longest a finished result waits in the worker
class _Reader(threading.Thread):
    """Receives messages as they arrive; tasks go to the loader as they are."""

    def __init__(self, conn: Connection, received: queue.SimpleQueue) -> None:
        super().__init__(name="conveyor-reader", daemon=True)
        self.conn, self.received = conn, received

    def run(self) -> None:
        try:
            while True:
                msg = self.conn.recv()
                if msg[0] == TASKS:
                    for task in msg[1]:
                        self.received.put(task)
                elif msg[0] == STOP:
                    break
        except (EOFError, OSError):
            pass  # the driver is gone: stop after the work in hand
        self.received.put(None)


class _Loader(threading.Thread):
    """Decodes received tasks' inputs ahead of the main thread, into the bounded inbox."""

    def __init__(self, received: queue.SimpleQueue, inbox: Inbox, runner: Any) -> None:
        super().__init__(name="conveyor-prefetch", daemon=True)
        self.received, self.inbox, self.runner = received, inbox, runner

    def run(self) -> None:
        while (task := self.received.get()) is not None:
            self.inbox.load(self.runner, Claim._make(task))
        self.inbox.put(None)


def serve(conn: Connection, runner: Any) -> None:
    """Run tasks from ``conn`` until told to stop or the driver goes away."""
    inbox = Inbox.ahead_of(runner)
    received: queue.SimpleQueue = queue.SimpleQueue()
    reader, loader = _Reader(conn, received), _Loader(received, inbox, runner)
    reader.start()
    loader.start()
    # conveyor's own threads are not the stage's work; a user load() on the loader is
    runner.meter.exclude(*((reader,) if runner.loads else (reader, loader)))
    batch = runner.batch_size
    pending: list[Any] = []
    outcomes: list[Any] = []
    last_flush = time.monotonic()
    stopping = False
    while True:
        if not stopping:
            stopping = _take(inbox, pending, batch, block=not pending and not outcomes)
            if batch > 1 and 0 < len(pending) < batch and not stopping:
                stopping = _fill(inbox, pending, batch, runner.batch_wait)
        if pending:
            take, pending = pending[:batch], pending[batch:]
            outcomes.extend(runner.run(take))
        idle = not pending and inbox.empty()
        # A stage with load() reports as soon as its loader has nothing left to load:
        # the driver sends more tasks when it sees results, and the loads must keep
        # running ahead of the calls.
        dry = runner.loads and received.empty()
        if outcomes and (idle or dry or stopping
                         or time.monotonic() - last_flush >= FLUSH_SECONDS):
            _send(conn, (RESULTS, to_wire(outcomes), runner.store.take_wrote(),
                         (runner.meter.take(), peak_rss())))
            outcomes = []
            last_flush = time.monotonic()
        if stopping and not pending and not outcomes:
            return


def _take(inbox: Inbox, pending: list[Any], want: int, block: bool) -> bool:
    """Move ready items into ``pending`` (waiting for one if ``block``). True on stop."""
    while len(pending) < want:
        try:
            item = inbox.get() if block else inbox.get_nowait()
        except queue.Empty:
            return False
        block = False
        if item is None:
            return True
        pending.append(item)
    return False


def _fill(inbox: Inbox, pending: list[Any], batch: int, wait: float) -> bool:
    """Top ``pending`` up to a batch, waiting ``wait`` seconds for stragglers. True on stop."""
    deadline = time.monotonic() + wait
    while len(pending) < batch:
        wait = deadline - time.monotonic()
        if wait <= 0:
            return False
        try:
            item = inbox.get(timeout=wait)
        except queue.Empty:
            return False
        if item is None:
            return True
        pending.append(item)
    return False


def _send(conn: Connection, msg: Any) -> None:
    try:
        conn.send(msg)
    except (BrokenPipeError, ConnectionResetError, EOFError):
        os._exit(0)  # the driver is gone; nothing left to report to


def unloadable(targets: list[tuple[str, str, str]], exc: Exception) -> str:
    """Why a group's code cannot be loaded here: the stage, its code, this environment.

    ``targets`` are (stage, module, qualname) of the group's stages, sent as
    plain data because the stages themselves are what could not be loaded.
    """
    import importlib

    where = os.environ.get(LABEL_VAR) or sys.executable
    stage, module, qualname = targets[0]
    for candidate in targets:  # in a fused group, name the stage whose module is missing
        try:
            importlib.import_module(candidate[1])
        except Exception:
            stage, module, qualname = candidate
            break
    why = str(exc) if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}"
    return f"stage {stage!r}: cannot import {module}.{qualname} in env {where}: {why}"


def main(fd: int, slot_fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver coordinates Ctrl-C
    die_with_parent()
    conn = Connection(fd)
    slot = Slot(slot_fd)
    kind, payload, path, targets = conn.recv()
    assert kind == INIT, kind
    sys.path[:0] = [p for p in path if p not in sys.path]
    try:
        spec = shipping.loads(payload)
    except Exception as exc:  # the stage's code does not import in this environment
        _send(conn, (SETUP_FAILED, unloadable(targets, exc), traceback.format_exc()))
        return
    runner = GroupRunner(spec)
    runner.note = slot.note
    try:
        seconds = runner.setup()
    except BaseException as exc:
        _send(conn, (SETUP_FAILED, *runner.setup_failed(exc)))
        return
    pin_torch(spec.resources.threads)
    _send(conn, (READY, os.getpid(), seconds))
    serve(conn, runner)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
