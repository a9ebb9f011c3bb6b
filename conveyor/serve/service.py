"""Serving a pipeline: requests in, the engine's warm workers, responses out.

A :class:`Service` is a front end of the :class:`~conveyor.engine.loop.Engine`,
which a thread of its own turns for as long as it serves: the same workers (set up once, kept warm
by ``min_workers``, given back after ``idle_timeout``), the same scheduler,
batching and fault handling as a batch run, over an in-memory ledger (a
request needs no record once it is answered)::

    HTTP handlers ── submit(value) ──▶ queue ──▶ service thread: engine.turn()
          ▲                                             │ rows keyed q<n>, q<n>/0, ...
          └──────── Future[Response] ◀── resolved when ─┘ every row of q<n> is final

A request is one input keyed ``q<n>``; everything derived from it carries
that key as a prefix, so the service knows when all of it is final (done,
routed out or failed) and answers with the outputs that went nowhere further
(the pipeline's results for that input), any failures, and the time and cost
each stage spent on it. Concurrent requests that reach a batch stage share
its batches (``batch_size``, ``batch_wait``) and are split back to their
requests. Requests for one stage alone run that stage and stop there.
"""

from __future__ import annotations

import math
import queue
import tempfile
import threading
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import codec
from ..engine.front import FrontEnd
from ..engine.loop import Engine
from ..errors import ConveyorError, InputError, PipelineError
from ..executors import make_executor
from ..executors.base import Executor
from ..ledger.base import FINISHED, Output, Record, Status, call_sizes
from ..ledger.memory import MemoryLedger
from ..observe.events import EventLog
from ..pipeline import Pipeline
from ..resources import DEFAULT_PRICES, Budget, hourly_price

TURN_WAIT = 0.05  # the longest the service thread sleeps without news
SERVE_IDLE_SECONDS = 300.0  # an idle worker beyond min_workers lives this long


class Overloaded(ConveyorError):
    """The service holds as many requests as it may; try again after ``retry_after`` s."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"overloaded; retry after {retry_after} s")
        self.retry_after = retry_after


class Closed(ConveyorError):
    """The service is shutting down (or broke) and takes no more requests."""


@dataclass
class Response:
    """What became of one request."""

    key: str
    outputs: list[dict[str, Any]]  # {"stage", "key", "value"} of results that went no further
    failures: list[dict[str, Any]]  # {"stage", "key", "error", "traceback"}
    timings: dict[str, float]  # seconds each stage spent on it
    cost: dict[str, float]  # what that time cost, per stage, at the service's prices
    seconds: float  # from submit to answer

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def cost_total(self) -> float:
        return sum(self.cost.values())


@dataclass
class _Request:
    key: str
    stage: str | None  # one stage alone, or the whole pipeline
    data: bytes  # the input, encoded
    future: Future
    started: float
    rows: set[tuple[str, str]] = field(default_factory=set)
    outstanding: int = 1  # rows of it not final yet (its input row, to begin with)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Snapshot:
    workers: dict[str, int]  # live, per stage
    ready: dict[str, int]  # set up and taking tasks, per stage
    queued: dict[str, int]  # items waiting, per stage


def request_key(row_key: str) -> str:
    """The request a row belongs to: ``q12`` for ``q12``, ``q12/0``, ``q12@b/3``."""
    return row_key.split("/", 1)[0].split("@", 1)[0]


class Service(FrontEnd):
    """Serves a pipeline from a thread of its own; see the module docstring."""

    open_ended = True  # more requests may always come
    idle_seconds = SERVE_IDLE_SECONDS

    def __init__(self, pipeline: Pipeline, executor: str | Executor = "local",
                 budget: Budget | None = None, run_dir: str | Path | None = None,
                 max_queue: int = 1000, prices: dict[str, float] | None = None) -> None:
        pipeline.validate()
        whole = [s for s in pipeline.stages.values() if s.barrier or s.side]
        if whole:
            what = ("a reduce" if whole[0].reduce else "a group" if whole[0].group
                    else "a reader of side inputs")
            raise PipelineError(f"stage {whole[0].name!r} is {what}: it needs a whole run, "
                                f"not one request, so this pipeline cannot be served")
        self._tmp = None if run_dir else tempfile.TemporaryDirectory(prefix="conveyor-serve-")
        budget = budget or Budget.detect()
        self.pipeline = pipeline
        self.run_dir = Path(run_dir or self._tmp.name)
        self.engine = Engine(pipeline, self.run_dir, make_executor(executor, budget=budget),
                             budget, self)
        self.max_queue = max_queue
        self.prices = {**DEFAULT_PRICES, **(prices or {})}
        self.on_response: Callable[[Response], None] = lambda response: None
        self.on_call: Callable[[str, float, int], None] = lambda stage, seconds, n: None
        self._inbox: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._requests: dict[str, _Request] = {}
        self._lock = threading.Lock()
        self._inflight = 0
        self._next = 0
        self._closing = False
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._rate = 0.0  # answers per second, smoothed (for Retry-After)
        self._last_answer = time.time()
        self.broken: str | None = None
        self._snapshot = _Snapshot({}, {}, {})

    # -- life -----------------------------------------------------------------------------

    def start(self) -> "Service":
        """Start the service thread (workers with ``min_workers`` start warming at once)."""
        self.engine.check_fits()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.engine.open(MemoryLedger(), EventLog(self.run_dir))
        self.engine.prepared()
        self._thread = threading.Thread(target=self._serve, name="conveyor-service",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Take no more requests (:class:`Closed`); those in flight go on. :meth:`stop` ends it."""
        self._closing = True

    def stop(self, grace: float = 30.0) -> None:
        """Take no more requests, answer those in flight (for up to ``grace`` s), then stop."""
        self.close()
        deadline = time.time() + grace
        while self.inflight and time.time() < deadline and not self.broken:
            time.sleep(0.01)
        self._stopped.set()
        self.engine.executor.wakeup()
        if self._thread is not None:
            self._thread.join()
        if self._tmp is not None:
            self._tmp.cleanup()

    @property
    def inflight(self) -> int:
        """Requests taken and not answered yet."""
        return self._inflight

    @property
    def closing(self) -> bool:
        """Whether :meth:`stop` was called: no more requests are taken."""
        return self._closing

    def workers(self) -> dict[str, int]:
        """Live workers per stage, as of the service thread's last turn."""
        return self._snapshot.workers

    def queued(self) -> dict[str, int]:
        """Items waiting per stage, as of the service thread's last turn."""
        return self._snapshot.queued

    @property
    def warm(self) -> bool:
        """Whether every stage has its ``min_workers`` set up and ready."""
        return all(self._snapshot.ready.get(name, 0) >= s.min_workers
                   for name, s in self.pipeline.stages.items())

    def wait_warm(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for :attr:`warm` (False: not warm yet, or broken)."""
        deadline = time.time() + timeout
        while not self.warm and not self.broken and time.time() < deadline:
            time.sleep(0.02)
        return self.warm and not self.broken

    def _take_snapshot(self) -> None:
        # Built by the service thread and swapped in whole: other threads (a metrics
        # scrape, a health check) read it without touching the engine's changing state.
        stages = self.engine.stages
        workers = {name: self.engine.workers_of(name) for name in stages}
        self._snapshot = _Snapshot({name: len(w) for name, w in workers.items()},
                                   {name: sum(x.ready for x in w) for name, w in workers.items()},
                                   {name: s.pending for name, s in stages.items()})

    # -- requests -------------------------------------------------------------------------

    def submit(self, value: Any, stage: str | None = None) -> Future:
        """Queue one input (for the whole pipeline, or ``stage`` alone); a Future of its Response.

        Raises :class:`Overloaded` when ``max_queue`` requests are in flight and
        :class:`Closed` once the service is stopping.
        """
        return self.submit_many([value], stage)[0]

    def submit_many(self, values: list[Any], stage: str | None = None) -> list[Future]:
        """Queue several inputs at once: all of them, or (overloaded, closed, one not JSON) none.

        Raises :class:`~conveyor.errors.InputError` for a value that cannot be
        encoded (a set, an integer past 64 bits ...), in the caller's thread.
        """
        encoded = []
        for value in values:
            try:
                encoded.append(codec.encode(value))
            except codec.EncodeError as exc:
                raise InputError(f"the input cannot be encoded as JSON: {exc}") from None
        if self._closing or self.broken:
            raise Closed(self.broken or "the service is shutting down")
        if stage is not None:
            self.pipeline[stage]  # raises KeyError naming it
        with self._lock:
            if self._inflight + len(values) > self.max_queue:
                raise Overloaded(self.retry_after())
            self._inflight += len(values)
            first = self._next + 1
            self._next += len(values)
        futures = []
        now = time.time()
        for n, data in enumerate(encoded, first):
            future: Future = Future()
            # Running from the start: a caller that gives up cannot cancel it under the
            # service thread's feet; the request is answered (and dropped) all the same.
            future.set_running_or_notify_cancel()
            self._inbox.put(_Request(f"q{n}", stage, data, future, now))
            futures.append(future)
        self.engine.executor.wakeup()
        return futures

    def retry_after(self) -> int:
        """Seconds until the queue has room, from the recent answer rate (at least 1)."""
        if self._rate <= 0:
            return 1
        return max(1, math.ceil(self._inflight / self._rate))

    # -- the service thread ------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while not self._stopped.is_set():
                self._take_requests()
                self.engine.turn(max_wait=TURN_WAIT)
                self._take_snapshot()
                if self.engine.fatal is not None:
                    raise self.engine.fatal
        except BaseException as exc:  # a bug or a broken stage contract: fail what is open
            self.broken = f"{type(exc).__name__}: {exc}"
            self.engine.events.emit("service_broken", error=self.broken,
                              traceback=traceback.format_exc())
            for request in list(self._requests.values()):
                self._answer(request, error=exc)
        finally:
            self.engine.stop()
            self.engine.close(None, self.broken)

    def _take_requests(self) -> None:
        by_stage: dict[str, list[tuple[str, Any]]] = {}
        while True:
            try:
                request = self._inbox.get_nowait()
            except queue.Empty:
                break
            stage = request.stage or self.pipeline.root().name
            self._requests[request.key] = request
            request.rows.add((stage, request.key))
            by_stage.setdefault(stage, []).append((request.key, request.data))
        for stage, items in by_stage.items():
            self.engine.add_inputs(stage, items)

    # -- what the engine asks its front end (see FrontEnd) ---------------------------------------

    def shape(self, records: list[Record]) -> list[Record]:
        """A one-stage request's outputs go nowhere further."""
        shaped = []
        for r in records:
            request = self._requests.get(request_key(r.key))
            if request is not None and request.stage is not None and r.outputs:
                r = r._replace(outputs=[Output(o.key, o.value) for o in r.outputs])
            shaped.append(r)
        return shaped

    def applied(self, records: list[Record], fused: set[tuple[str, str]]) -> None:
        calls = call_sizes(records)
        for (stage, started, ended), n in calls.items():
            self.on_call(stage, ended - started, n)
        touched: dict[str, _Request] = {}
        for r in records:
            request = self._requests.get(request_key(r.key))
            if request is None:
                continue
            touched[request.key] = request
            request.rows.add((r.stage, r.key))
            if r.item_id is None:
                request.outstanding += 1  # a fused row, created final (or to retry)
            seconds = (r.ended - r.started) / calls[(r.stage, r.started, r.ended)]
            request.timings[r.stage] = request.timings.get(r.stage, 0.0) + seconds
            request.cost[r.stage] = request.cost.get(r.stage, 0.0) + self._price(r.stage, seconds)
            if r.status in FINISHED or r.status is Status.FAILED:
                request.outstanding -= 1
            if r.status is Status.FAILED:
                request.failures.append({"stage": r.stage, "key": r.key, "error": r.error,
                                         "traceback": r.traceback})
            for out in r.outputs:
                for target in out.targets:
                    request.rows.add((target, out.key))
                    if (target, out.key) not in fused:
                        request.outstanding += 1
                if not out.targets and not out.gathers:
                    value = codec.decode(self.engine.store.get(out.value.data, out.value.ref))
                    request.outputs.append({"stage": r.stage, "key": out.key, "value": value})
        # Judged once the whole message is counted: a fused row follows its parent, whose
        # output to it was not counted as outstanding, so a request is at 0 in between.
        for request in touched.values():
            if request.outstanding == 0:
                self._answer(request)

    def _price(self, stage: str, seconds: float) -> float:
        res = self.pipeline[stage].resources
        return seconds / 3600 * hourly_price(res.cpus, res.ram, res.gpus, self.prices)

    def _answer(self, request: _Request, error: BaseException | None = None) -> None:
        self._requests.pop(request.key, None)
        ledger = self.engine.ledger
        assert isinstance(ledger, MemoryLedger)
        ledger.forget(request.rows)
        with self._lock:
            self._inflight -= 1
        now = time.time()
        gap = max(now - self._last_answer, 1e-3)
        self._rate = 0.9 * self._rate + 0.1 / gap
        self._last_answer = now
        if error is not None:
            request.future.set_exception(error)
            return
        response = Response(request.key, request.outputs, request.failures, request.timings,
                            request.cost, now - request.started)
        request.future.set_result(response)
        self.on_response(response)
