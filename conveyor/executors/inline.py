"""The inline executor: every stage runs in the driver's own process, one call at a time.

For debugging (a breakpoint in a stage just works) and for tests. A "worker"
is a :class:`~conveyor.worker.runner.GroupRunner` held in this process; its setup
runs as it starts (the driver waits for it, and it is timed like a worker's), and
tasks run as soon as they are sent. Nothing can be killed from outside, so a
stage's ``timeout=`` is enforced by a timer (``SIGALRM``) that interrupts the call:
the item fails with :class:`~conveyor.errors.StageTimeout` and is retried like any
failure. The timer needs the main thread; a run with timeouts on another thread is
refused.
The stage's ``env`` is not applied; a stage with its own Python environment
(``requirements=``/``python=``) cannot run here, and its items fail saying so.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from functools import partial
from typing import Any, Iterator, Mapping

from ..errors import StageTimeout
from ..ledger.base import Claim
from ..worker.runner import GroupRunner, WorkerSpec
from .base import Event, Executor, Exited, Ready, Results, SetupFailed


class InlineExecutor(Executor):
    """Runs stages in this process; see the module docstring."""

    name = "inline"
    can_kill = False

    def __init__(self) -> None:
        self._runners: dict[int, GroupRunner] = {}
        self._wake = threading.Event()
        self._events: list[Event] = []
        self._next_id = 0

    def start(self, spec: WorkerSpec, env: Mapping[str, str]) -> int:
        worker = self._next_id
        self._next_id += 1
        if spec.python_env is not None:  # running it here would silently use the driver's packages
            self._events += [SetupFailed(worker, f"stage {spec.group!r} declares its own Python "
                                         f"environment (requirements=/python=), which the inline "
                                         f"executor cannot give it: use the local executor", ""),
                             Exited(worker, "setup failed")]
            return worker
        timed = [s.stage for s in spec.stages if s.stage.timeout]
        if timed and threading.current_thread() is not threading.main_thread():
            self._events += [SetupFailed(worker, f"stage {timed[0].name!r} sets timeout="
                                         f"{timed[0].timeout:g}, which the inline executor can "
                                         f"enforce only in a run on the main thread: run it "
                                         f"there, or use the local executor", ""),
                             Exited(worker, "setup failed")]
            return worker
        runner = GroupRunner(spec)
        for stage in timed:
            runner.runners[stage.name].limit = partial(_deadline, stage.timeout)
        try:
            seconds = runner.setup()
        except Exception as exc:
            self._events += [SetupFailed(worker, *runner.setup_failed(exc)),
                             Exited(worker, "setup failed")]
            return worker
        self._runners[worker] = runner
        self._events.append(Ready(worker, seconds))
        return worker

    def send(self, worker: int, tasks: list[Claim]) -> None:
        runner = self._runners.get(worker)
        if runner is None:
            return
        loaded = [runner.load(task) for task in tasks]
        size = runner.batch_size
        records = []
        for start in range(0, len(loaded), size):
            records.extend(runner.run(loaded[start:start + size]))
        # no peak memory: the runner shares the driver's process
        self._events.append(Results(worker, records, runner.store.take_wrote(),
                                    (runner.meter.take(), None)))

    def wakeup(self) -> None:
        self._wake.set()

    def poll(self, timeout: float) -> list[Event]:
        if not self._events and timeout > 0:
            self._wake.wait(timeout)  # nothing runs in the background: only time can pass
        self._wake.clear()
        events, self._events = self._events, []
        return events

    def stop(self, worker: int, kill: bool = False) -> None:
        if self._runners.pop(worker, None) is not None:
            self._events.append(Exited(worker, "exited"))

    def pid(self, worker: int) -> int | None:
        return None

    def workers(self) -> list[int]:
        return list(self._runners)


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Interrupt the block with :class:`StageTimeout` once it has run ``seconds``."""
    def expired(signum: int, frame: Any) -> None:
        raise StageTimeout(f"timed out after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
