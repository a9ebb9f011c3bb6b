"""The batch run: a pipeline over its inputs on a run directory, to the end.

:func:`run_pipeline` (what :meth:`Pipeline.run` calls) picks the executor and
the budget, takes the run directory's lock, opens the SQLite ledger, gets it
ready (:mod:`conveyor.engine.prepare`: recovery, changed stages, inputs; a
first run's first worker starts meanwhile, so its start-up overlaps that),
then turns the :class:`~conveyor.engine.loop.Engine` until no stage has
pending or running items and every reduce has run. SIGINT and SIGTERM stop it
cleanly: workers are stopped, what they finished is recorded, and the same
command resumes.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from .. import rundir
from ..errors import RunInterrupted
from ..executors import make_executor
from ..ledger.sqlite import SqliteLedger
from ..observe.events import EventLog
from ..resources import Budget
from ..result import RunResult
from ..store import record_store
from .front import FrontEnd
from .lock import RunLock
from .loop import Engine
from .prepare import prepare

if TYPE_CHECKING:
    from ..pipeline import Pipeline

STOP_GRACE = 5.0  # seconds workers get to finish what they hold at the end of a run
SIGNAL_GRACE = 2.0  # ... and when a signal stopped it


def run_pipeline(pipeline: "Pipeline", inputs: Iterable[Any] | None, *,
                 run_dir: str | os.PathLike[str], executor: str = "local",
                 cpus: float | None = None, ram: int | str | None = None,
                 gpus: int | None = None, force: Iterable[str] = (),
                 retry: bool | Iterable[str] = True, progress: bool = False, bench: bool = False,
                 address: str | None = None, store: str | None = None) -> RunResult:
    """Run ``pipeline`` over ``inputs`` on ``run_dir``; see :meth:`Pipeline.run`."""
    pipeline.validate()
    if executor == "ray" and address is not None:  # the cluster's budget, not this node's
        runner = make_executor(executor, address)
        budget = runner.cluster_budget(cpus, ram, gpus)  # type: ignore[attr-defined]
    else:
        budget = Budget.detect(cpus=cpus, ram=ram, gpus=gpus)
        runner = make_executor(executor, address, budget)
    if store is not None:
        record_store(run_dir, store)
    retry_stages = None if retry is True else () if retry is False else tuple(retry)
    batch = BatchRun(pipeline, Path(run_dir), force=tuple(force), retry=retry_stages)
    return batch.run(Engine(pipeline, Path(run_dir), runner, budget, batch, progress, bench),
                     inputs)


class BatchRun(FrontEnd):
    """One pipeline on one run directory, to the end; see the module docstring."""

    def __init__(self, pipeline: "Pipeline", run_dir: Path, force: tuple[str, ...] = (),
                 retry: tuple[str, ...] | None = None) -> None:
        self.pipeline = pipeline
        self.run_dir = run_dir
        self.force = force
        self.retry = retry  # stages whose failed items are retried; None: all
        self.signal: str | None = None  # the signal that stopped the run

    def run(self, engine: Engine, inputs: Iterable[Any] | None) -> RunResult:
        for name in (*self.force, *(self.retry or ())):
            self.pipeline[name]  # raises KeyError naming the stage
        engine.check_fits()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with RunLock(self.run_dir) as lock, self._signals():
            ledger = SqliteLedger(rundir.ledger(self.run_dir))
            engine.open(ledger, EventLog(self.run_dir), lock.previous)
            clean = prepared = False
            try:
                if inputs is not None:
                    engine.start_early()
                prepare(self.pipeline, ledger, engine.store, inputs, self.force, self.retry,
                        engine.events, lambda: self.signal, engine.observer.taking_inputs)
                engine.prepared()
                prepared = True
                while self.signal is None and engine.fatal is None and not engine.finished():
                    engine.turn()
                clean = True
            finally:
                engine.stop(STOP_GRACE if self.signal is None else SIGNAL_GRACE)
                if clean or (prepared and (engine.fatal or self.signal)):
                    engine.commit()  # consistent: each item is recorded whole
                engine.close(self.signal, str(engine.fatal or "") or None, counted=prepared)
                ledger.close()
        if engine.fatal is not None:
            raise engine.fatal
        if self.signal is not None:
            raise RunInterrupted(f"run interrupted by {self.signal}; finished items are "
                                 f"recorded, run the same command again to resume")
        return RunResult(self.run_dir)

    @contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            self.signal = signal.Signals(signum).name

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
