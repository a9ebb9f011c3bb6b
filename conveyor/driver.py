"""The driver: the one loop that owns a run.

::

      inputs ──▶ ledger (pending rows) ◀──────────────── record outcomes ◀──┐
                    │                                    (grouped commits)  │
                    ▼                                                       │
      scheduler.plan() ── targets ──▶ start / drain workers (executor)      │
                    │                                                       │
                    ▼                                                       │
      claim pending rows ── send(tasks) ──▶ workers ── Results/Exited ──────┘

Only this loop, in one thread, writes the ledger. Each turn it:

1. polls the executor for outcomes, exits and setup failures, and records
   them: an outcome becomes ``done`` with its outputs and the downstream rows
   they were routed to; an error is retried after a back-off or becomes
   ``failed``; a dead worker's current task fails with the reason and the
   tasks it had not started go back to ``pending``;
2. kills workers whose current task ran past the stage's ``timeout``;
3. asks :func:`conveyor.scheduler.plan` for worker targets and starts or
   drains workers to meet them within the budget;
4. tops up each worker's window of tasks from the ledger, except for stages
   whose downstream queue is full (backpressure);
5. opens a reduce once nothing above it can produce more;
6. commits the ledger every few tens of milliseconds (durability is grouped:
   a crash loses at most the last group, whose items simply run again).

The run ends when no stage has pending or running items. Its per-stage
counters live in memory and are derived from the ledger at start, so the
driver's memory does not grow with the number of items.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson

from . import codec
from .errors import RunInterrupted, StageContractError
from .events import EventLog
from .executors.base import Executor, Exited, Ready, Results, SetupFailed
from .fingerprint import fingerprints
from .items import input_items
from .ledger.base import Claim, KeyCollision, Output, Status
from .ledger.sqlite import SqliteLedger
from .lock import RunLock
from .pipeline import Pipeline, Stage
from .resources import Budget, Grant, Pool
from .result import LEDGER_FILE, RunResult
from .runner import ERROR, FATAL, Outcome, WorkerSpec
from .scheduler import StageLoad, plan
from .store import Store
from .worker import pinned_env

COMMIT_SECONDS = 0.05  # the longest a finished item waits to be durable
MIN_WORKER_LIFE = 1.0  # seconds before a busy stage's worker may be moved elsewhere
IDLE_SECONDS = 0.5  # an idle worker whose stage has nothing coming is stopped after this
QUEUE_LIMIT = 1000  # pending items a stage may hold before its upstreams are throttled
WINDOW_SECONDS = 0.25  # each worker holds about this much work ahead of it
SETUP_FAILURES = 3  # setups failing in a row that mark a stage as broken


@dataclass
class _Worker:
    id: int
    stage: str
    grant: Grant
    started: float
    ready: bool = False
    draining: bool = False
    kill_reason: str | None = None
    # item id -> claim, in the order sent; the first is the one running now
    inflight: dict[int, Claim] = field(default_factory=dict)
    head_since: float = 0.0  # when the task now at the head began
    idle_since: float = 0.0


@dataclass
class _StageState:
    stage: Stage
    depth: int
    fingerprint: str
    pending: int = 0
    running: int = 0
    workers: set[int] = field(default_factory=set)
    service: float | None = None  # seconds per item per worker, smoothed
    wait_until: float = 0.0  # nothing claimable before (retry back-off)
    ancestors: set[str] = field(default_factory=set)
    downstream: list[str] = field(default_factory=list)
    reduces_below: set[str] = field(default_factory=set)
    setup_failures: int = 0  # in a row, without a worker getting ready


class Driver:
    """Runs one pipeline on one run directory; see the module docstring."""

    def __init__(self, pipeline: Pipeline, run_dir: Path, executor: Executor, budget: Budget,
                 force: tuple[str, ...] = (), progress: bool = False) -> None:
        self.pipeline = pipeline
        self.run_dir = run_dir
        self.executor = executor
        self.budget = budget
        self.force = force
        self.progress = progress
        self.pool = Pool(budget)
        self.store = Store(run_dir)
        self.workers: dict[int, _Worker] = {}
        self.stages: dict[str, _StageState] = {}
        self._fatal: StageContractError | None = None
        self._signal: str | None = None
        self._last_commit = 0.0
        self._last_progress = 0.0
        self._settled: set[str] = set()  # reduce stages checked since their inputs last changed
        self._ledger: SqliteLedger
        self._events: EventLog

    # -- the run --------------------------------------------------------------------

    def run(self, inputs: Iterable[Any] | None) -> RunResult:
        for name in self.force:
            self.pipeline[name]  # raises KeyError naming the stage
        for stage in self.pipeline.stages.values():
            self.budget.check_fits(stage.name, stage.resources)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with RunLock(self.run_dir) as lock, self._signals():
            self._ledger = SqliteLedger(self.run_dir / LEDGER_FILE)
            self._events = EventLog(self.run_dir)
            clean = prepared = False
            try:
                self._events.emit("run_start", pipeline=self.pipeline.name,
                                  executor=self.executor.name, budget=self.budget.describe(),
                                  pid=os.getpid(), took_over=lock.previous)
                self._prepare(inputs)
                self._ledger.commit()
                prepared = True
                self._loop()
                clean = True
            finally:
                self._stop_all()
                if clean or (prepared and (self._fatal or self._signal)):
                    self._ledger.commit()  # consistent: each item is recorded whole
                self._events.emit("run_end", counts=self._ledger.counts(),
                                  interrupted=self._signal, fatal=str(self._fatal or "") or None)
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

    # -- preparing the ledger ------------------------------------------------------------

    def _prepare(self, inputs: Iterable[Any] | None) -> None:
        ledger, pipe = self._ledger, self.pipeline
        recovered = ledger.recover()
        if recovered:
            self._events.emit("recovered", items=recovered)
        order = pipe.order()
        ledger.set_meta("pipeline", pipe.name)
        ledger.set_meta("stages", ",".join(pipe.stages))
        fps = fingerprints(pipe)
        old = ledger.stage_fingerprints()
        root = pipe.root().name
        for gone in sorted(set(old) - set(fps)):
            ledger.drop_stage(gone)
            self._events.emit("stage_removed", stage=gone)
        changed = [n for n in order if n in self.force or old.get(n) != fps[n]]
        for name in changed:
            if old:
                self._events.emit("stage_reset", stage=name, forced=name in self.force,
                                  new=name not in old)
            if name == root:
                ledger.reset_stage(name)
            else:
                ledger.drop_stage(name)
                self._reroute(name)
            ledger.set_stage_fingerprint(name, fps[name])
        for name in {up for n in changed for up in pipe[n].upstream}:
            if pipe.routes(name):
                ledger.refresh_routed(name)
        if inputs is not None:
            report = ledger.add_inputs(
                root, ((key, self.store.put(data)) for key, data in self._interruptible(inputs)))
            self._events.emit("inputs", added=report.added, changed=report.changed,
                              unchanged=report.unchanged, missing=len(report.missing),
                              missing_keys=report.missing[:20])
        ledger.retry_failed()
        counts = ledger.counts()
        for depth, name in enumerate(order):
            stage = pipe[name]
            below = pipe.descendants(name)
            state = _StageState(stage, depth, fps[name],
                                ancestors=pipe.ancestors(name),
                                downstream=[s.name for s in pipe.downstream(name)],
                                reduces_below={n for n in below if pipe[n].reduce})
            state.pending = counts.get(name, {}).get("pending", 0)
            self.stages[name] = state

    def _interruptible(self, inputs: Iterable[Any]) -> Iterator[tuple[str, bytes]]:
        """The inputs, stopping with nothing kept if a signal arrives while they are read."""
        for pair in input_items(inputs):
            if self._signal is not None:
                raise RunInterrupted(f"interrupted by {self._signal} while reading inputs; "
                                     f"nothing was recorded")
            yield pair

    def _reroute(self, name: str) -> None:
        """Give a (re)defined stage the rows its upstreams' finished outputs route to it."""
        stage = self.pipeline[name]
        for up in stage.upstream:
            for output_id, key, digest, data, ref in self._ledger.finished_outputs(up):
                if stage.when is not None:
                    try:
                        if not stage.when(codec.decode(self.store.get(data, ref))):
                            continue
                    except Exception:
                        continue  # the item's producer recorded no such route before either
                try:
                    if stage.reduce:
                        self._ledger.gather(name, output_id)
                    else:
                        self._ledger.route(name, key, output_id, digest, up)
                except KeyCollision as exc:
                    self._events.emit("route_refused", stage=name, key=key, error=str(exc))

    # -- the loop ----------------------------------------------------------------------

    def _loop(self) -> None:
        while self._signal is None and self._fatal is None:
            now = time.time()
            self._open_reduces()
            self._reconcile(now)
            busy = self._dispatch(now)
            for event in self.executor.poll(0.0 if busy else self._idle_timeout(now)):
                self._handle(event)
            now = time.time()
            self._check_timeouts(now)
            self._maybe_commit(now)
            if self._finished():
                return

    def _idle_timeout(self, now: float) -> float:
        waits = [s.wait_until - now for s in self.stages.values()
                 if s.pending and s.wait_until > now]
        return max(0.0, min([COMMIT_SECONDS, *waits]))

    def _finished(self) -> bool:
        if any(s.pending or s.running for s in self.stages.values()):
            return False
        return all(name in self._settled for name, s in self.stages.items() if s.stage.reduce)

    def _maybe_commit(self, now: float, force: bool = False) -> None:
        if force or now - self._last_commit >= COMMIT_SECONDS:
            self._ledger.commit()
            self._events.flush()
            self._last_commit = now
            if self.progress and now - self._last_progress >= 2.0:
                self._print_progress()
                self._last_progress = now

    def _print_progress(self) -> None:
        parts = []
        for name, s in self.stages.items():
            parts.append(f"{name}: {s.pending} pending {s.running} running "
                         f"{len(s.workers)} workers")
        print(" | ".join(parts), flush=True)

    # -- events from workers ----------------------------------------------------------------

    def _handle(self, event: Any) -> None:
        if isinstance(event, Results):
            self._record(event.worker, event.outcomes)
        elif isinstance(event, Ready):
            worker = self.workers.get(event.worker)
            if worker is not None:
                worker.ready = True
                worker.head_since = worker.idle_since = time.time()
                self.stages[worker.stage].setup_failures = 0
        elif isinstance(event, SetupFailed):
            worker = self.workers.get(event.worker)
            if worker is not None:
                self._setup_failed(worker, event.error, event.traceback)
        elif isinstance(event, Exited):
            self._exited(event.worker, event.reason)

    def _record(self, worker_id: int, outcomes: list[Outcome]) -> None:
        worker = self.workers.get(worker_id)
        if worker is None:
            return
        state = self.stages[worker.stage]
        calls: dict[tuple[float, float], int] = {}  # a batch's outcomes share one call
        for outcome in outcomes:
            claim = worker.inflight.get(outcome.id)
            if claim is None:
                continue
            if outcome.status == FATAL:
                self._fail(worker, claim, outcome.error or "", None, retry=False)
                self._fatal = StageContractError(outcome.error)
            elif outcome.status == ERROR:
                self._fail(worker, claim, outcome.error or "", outcome.traceback)
            else:
                self._complete(worker, claim, outcome)
            span = (outcome.started, outcome.ended)
            calls[span] = calls.get(span, 0) + 1
        for (started, ended), n in calls.items():
            per_item = max(ended - started, 1e-6) / n
            state.service = per_item if state.service is None else (
                0.8 * state.service + 0.2 * per_item)
        now = time.time()
        worker.head_since = now
        if not worker.inflight:
            worker.idle_since = now

    def _complete(self, worker: _Worker, claim: Claim, outcome: Outcome) -> None:
        state = self.stages[worker.stage]
        try:
            self._ledger.complete(claim.id, outcome.outputs, Status(outcome.status),
                                  state.fingerprint, outcome.ended)
        except KeyCollision as exc:
            self._fail(worker, claim, str(exc), None, retry=False)
            return
        del worker.inflight[claim.id]
        state.running -= 1
        for out in outcome.outputs:
            for target in out.targets:
                self.stages[target].pending += 1
            for reduce in out.gathers:
                self._settled.discard(reduce)
        self._settled.difference_update(state.reduces_below)

    def _fail(self, worker: _Worker, claim: Claim, error: str, tb: str | None,
              retry: bool = True) -> None:
        state = self.stages[worker.stage]
        stage = state.stage
        now = time.time()
        retry_at = None
        if retry and claim.attempt <= stage.retries:
            retry_at = now + stage.retry_backoff * 2 ** (claim.attempt - 1)
        status = self._ledger.fail(claim.id, error, tb, now, retry_at)
        worker.inflight.pop(claim.id, None)
        state.running -= 1
        if status is Status.PENDING:
            state.pending += 1
            self._events.emit("retry", stage=stage.name, key=claim.key, attempt=claim.attempt,
                              error=error)
        else:
            self._events.emit("failed", stage=stage.name, key=claim.key,
                              attempts=claim.attempt, error=error)

    def _setup_failed(self, worker: _Worker, error: str, tb: str) -> None:
        """The tasks sent to a worker whose setup raised fail with that error.

        After SETUP_FAILURES in a row the stage is taken as broken: every item
        waiting for it fails now with the setup error, instead of each one
        waiting for a worker that cannot start.
        """
        state = self.stages[worker.stage]
        state.setup_failures += 1
        self._events.emit("setup_failed", stage=worker.stage, worker=worker.id, error=error)
        worker.kill_reason = "setup failed"
        for claim in list(worker.inflight.values()):
            self._fail(worker, claim, error, tb)
        if state.setup_failures < SETUP_FAILURES:
            return
        while state.pending:
            claims = self._ledger.claim(state.stage.name, 1000, f"w{worker.id}", time.time())
            if not claims:
                break
            state.pending -= len(claims)
            state.running += len(claims)
            for claim in claims:
                worker.inflight[claim.id] = claim
                self._fail(worker, claim, error, tb, retry=False)

    def _exited(self, worker_id: int, reason: str) -> None:
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return
        state = self.stages[worker.stage]
        state.workers.discard(worker_id)
        self.pool.release(worker.grant)
        self._events.emit("worker_exit", stage=worker.stage, worker=worker_id,
                          reason=worker.kill_reason or reason)
        if not worker.inflight:
            return
        # The head task (the head batch for a batch stage) was running: it failed.
        # The tasks behind it never started: they go back without using an attempt.
        claims = list(worker.inflight.values())
        running = claims[: state.stage.batch_size or 1]
        why = worker.kill_reason or f"worker {reason}"
        for claim in running:
            self._fail(worker, claim, why, None)
        rest = [c.id for c in claims[len(running):]]
        self._ledger.release(rest)
        state.running -= len(rest)
        state.pending += len(rest)

    def _check_timeouts(self, now: float) -> None:
        if not self.executor.can_kill:
            return
        for worker in self.workers.values():
            timeout = self.stages[worker.stage].stage.timeout
            if (timeout and worker.inflight and worker.ready and worker.kill_reason is None
                    and now - worker.head_since > timeout):
                worker.kill_reason = f"timed out after {timeout:g} s"
                self.executor.stop(worker.id, kill=True)

    # -- workers ---------------------------------------------------------------------------

    def _loads(self) -> list[StageLoad]:
        loads = []
        for name, s in self.stages.items():
            ready = s.pending if s.wait_until <= time.time() else 0
            live = [w for w in s.workers if not self.workers[w].draining]
            loads.append(StageLoad(
                name=name, resources=s.stage.resources, ready=ready, running=s.running,
                workers=len(live), service=s.service, batch=s.stage.batch_size or 1,
                cap=s.stage.concurrency, depth=s.depth, throttled=self._throttled(s)))
        return loads

    def _room(self, state: _StageState) -> int:
        """How many more items ``state`` may take before its downstream queues are full.

        Items in flight count against the room: each will land downstream.
        """
        queued = [self.stages[d].pending for d in state.downstream
                  if not self.stages[d].stage.reduce]
        return QUEUE_LIMIT - max(queued, default=0) - state.running

    def _throttled(self, state: _StageState) -> bool:
        return self._room(state) <= 0

    def _reconcile(self, now: float) -> None:
        """Start and drain workers to meet the plan's targets."""
        targets = plan(self._loads(), self.budget)
        live = {name: [self.workers[w] for w in state.workers if not self.workers[w].draining]
                for name, state in self.stages.items()}
        # A stage short of its target that cannot start a worker now waits for room.
        starved = any(len(live[name]) < targets[name] and not self.pool.fits(state.stage.resources)
                      for name, state in self.stages.items())
        for name, state in self.stages.items():
            excess = len(live[name]) - targets[name]
            if excess <= 0:
                continue
            has_work = state.pending > 0 or state.running > 0
            # Idle workers first, then the youngest; busy ones only once settled in.
            for worker in sorted(live[name], key=lambda w: (bool(w.inflight), -w.started)):
                if excess <= 0:
                    break
                if has_work and now - worker.started < MIN_WORKER_LIFE:
                    continue
                # An idle worker waits a moment for more work from upstream, unless
                # another stage needs its room now.
                if (not has_work and not starved and self._upstream_active(state)
                        and now - worker.idle_since < IDLE_SECONDS):
                    continue
                worker.draining = True
                excess -= 1
        for name, state in self.stages.items():
            for _ in range(targets[name] - len(live[name])):
                if not self._start_worker(state, now):
                    break
        for worker in list(self.workers.values()):
            if worker.draining and not worker.inflight and worker.kill_reason is None:
                worker.kill_reason = "stopped"
                self.executor.stop(worker.id)

    def _upstream_active(self, state: _StageState) -> bool:
        return any(self.stages[a].pending or self.stages[a].running for a in state.ancestors)

    def _start_worker(self, state: _StageState, now: float) -> bool:
        grant = self.pool.acquire(state.stage.resources)
        if grant is None:
            return False
        stage = state.stage
        spec = WorkerSpec(stage, self.pipeline.routes(stage.name), str(self.run_dir),
                          self.store.inline_limit)
        env = pinned_env(stage.resources.threads, grant.devices, stage.env)
        worker_id = self.executor.start(spec, env)
        self.workers[worker_id] = _Worker(worker_id, stage.name, grant, now,
                                          head_since=now, idle_since=now)
        state.workers.add(worker_id)
        self._events.emit("worker_start", stage=stage.name, worker=worker_id,
                          pid=self.executor.pid(worker_id), cpus=stage.resources.cpus,
                          ram=stage.resources.ram, gpus=stage.resources.gpus,
                          devices=list(grant.devices), threads=stage.resources.threads)
        return True

    def _stop_all(self) -> None:
        """Stop every worker; record what they finish, hand back what they did not start."""
        for event in self.executor.shutdown(grace=5.0 if self._signal is None else 2.0):
            if isinstance(event, Results):
                self._record(event.worker, event.outcomes)
        for worker in list(self.workers.values()):
            state = self.stages[worker.stage]
            self._ledger.release(list(worker.inflight))
            state.running -= len(worker.inflight)
            state.pending += len(worker.inflight)
            worker.inflight.clear()
            self._exited(worker.id, "stopped with the run")

    # -- handing out work ----------------------------------------------------------------------

    def _window(self, state: _StageState) -> int:
        batch = state.stage.batch_size
        if batch:
            return 2 * batch
        if state.service is None:
            return 2
        return max(2, min(512, math.ceil(WINDOW_SECONDS / state.service)))

    def _dispatch(self, now: float) -> bool:
        """Top up every worker's window; True if any task was sent."""
        sent = False
        for state in sorted(self.stages.values(), key=lambda s: -s.depth):
            if not state.pending or state.wait_until > now or self._throttled(state):
                continue
            name = state.stage.name
            if state.stage.reduce and (name not in self._settled or self._upstream_active(state)):
                continue
            window = self._window(state)
            for worker_id in sorted(state.workers):
                worker = self.workers[worker_id]
                want = window - len(worker.inflight)
                # Top up by at least half a window, so claims and messages stay chunky.
                if worker.draining or want < max(1, window // 2):
                    continue
                want = min(want, self._room(state))
                if want <= 0:
                    break
                claims = self._ledger.claim(name, want, f"w{worker_id}", now)
                if claims:
                    if state.stage.reduce:
                        claims = [c._replace(ref=self._write_gather_file(name)) for c in claims]
                    if not worker.inflight:
                        worker.head_since = now
                    for claim in claims:
                        worker.inflight[claim.id] = claim
                    state.pending -= len(claims)
                    state.running += len(claims)
                    self.executor.send(worker_id, claims)
                    sent = True
                if len(claims) < want:
                    if state.pending:  # the rest is backing off before a retry
                        state.wait_until = self._ledger.next_retry(name) or now
                    break
        return sent

    # -- reduces ----------------------------------------------------------------------------------

    def _open_reduces(self) -> None:
        """Check each reduce once nothing above it can change; (re)open it if its input did."""
        for name, state in self.stages.items():
            if not state.stage.reduce or name in self._settled:
                continue
            if state.running or self._upstream_active(state):
                continue
            digest = _gather_digest(self._ledger.gathered(name))
            row = self._ledger.reduce_row(name)
            if row is None or row[1] != digest:
                self._ledger.open_reduce(name, name, digest)
                state.pending = 1
            self._settled.add(name)

    def _write_gather_file(self, name: str) -> str:
        """Write a reduce's input, one value (or ``@ref``) per line; return its reference."""
        ref = f"gather/{name}.jsonl"
        path = self.run_dir / ref
        path.parent.mkdir(exist_ok=True)
        with open(path, "wb") as fh:
            for row in self._ledger.gathered(name):
                fh.write(b"@" + row.ref.encode() if row.ref else row.data or b"null")
                fh.write(b"\n")
        return ref


def _gather_digest(rows: Iterable[Any]) -> str:
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for row in rows:
        h.update(orjson.dumps([row.key, row.digest]))
    return h.hexdigest()
