"""The driver: runs a pipeline over its inputs on a run directory, to the end.

It holds the run directory's lock, opens the SQLite ledger, gets it ready
(:mod:`conveyor.prepare`: recovery, changed stages, inputs; a first run's
first worker starts meanwhile, so its start-up overlaps that), then turns the
:class:`~conveyor.engine.Engine` until no stage has pending or running items
and every reduce has run. SIGINT and SIGTERM stop it cleanly: workers are
stopped, what they finished is recorded, and the same command resumes.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from .engine import Engine
from .errors import RunInterrupted
from .events import EventLog
from .executors.base import Executor
from .ledger.sqlite import SqliteLedger
from .lock import RunLock
from .pipeline import Pipeline
from .prepare import prepare
from .resources import Budget
from .result import LEDGER_FILE, RunResult


class Driver(Engine):
    """Runs one pipeline on one run directory; see the module docstring."""

    def __init__(self, pipeline: Pipeline, run_dir: Path, executor: Executor, budget: Budget,
                 force: tuple[str, ...] = (), retry: tuple[str, ...] | None = None,
                 progress: bool = False, bench: bool = False) -> None:
        super().__init__(pipeline, run_dir, executor, budget, progress, bench)
        self.force = force
        self.retry = retry  # stages whose failed items are retried; None: all

    def run(self, inputs: Iterable[Any] | None) -> RunResult:
        for name in (*self.force, *(self.retry or ())):
            self.pipeline[name]  # raises KeyError naming the stage
        for stage in self.pipeline.stages.values():
            self.budget.check_fits(stage.name, stage.resources)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with RunLock(self.run_dir) as lock, self._signals():
            self._open(SqliteLedger(self.run_dir / LEDGER_FILE), EventLog(self.run_dir))
            clean = prepared = False
            try:
                self._observer.start(self.executor.name, self.budget, lock.previous)
                self._build_groups()
                if inputs is not None:
                    self._start_early()
                prepare(self.pipeline, self._ledger, self.store, inputs, self.force, self.retry,
                        self._events, lambda: self._signal)
                self._count_pending()
                self._commit()
                prepared = True
                self._observer.prepared(self._ledger.counts() if self.progress else None)
                self._loop()
                clean = True
            finally:
                self._stop_all()
                if clean or (prepared and (self._fatal or self._signal)):
                    self._commit()  # consistent: each item is recorded whole
                self._observer.finish(self._signal, str(self._fatal or "") or None,
                                      self._queues() if prepared else None)
                self._events.close()
                self._ledger.close()
        if self._fatal is not None:
            raise self._fatal
        if self._signal is not None:
            raise RunInterrupted(f"run interrupted by {self._signal}; finished items are "
                                 f"recorded, run the same command again to resume")
        return RunResult(self.run_dir)

    @contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            self._signal = signal.Signals(signum).name

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _loop(self) -> None:
        while self._signal is None and self._fatal is None:
            self.turn()
            if self._finished():
                return

    def _finished(self) -> bool:
        if any(s.pending or s.running for s in self.stages.values()):
            return False
        return all(name in self._settled for name, s in self.stages.items() if s.stage.reduce)

