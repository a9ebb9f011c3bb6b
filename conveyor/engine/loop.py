"""The engine: the loop machinery that runs stages on workers, shared by batch runs and serving.

::

     inputs ──▶ ledger: pending rows ◀──────────── record(results), grouped commits ◀──┐
                   │                                                                  │
                   ▼                                                                  │
     scheduler.plan / lease_order ──▶ WorkerPool: start, lease, stop workers          │
                   │                                                                  │
                   ▼                                                                  │
     claim rows ── executor.send(tasks) ──▶ workers (one process per worker) ─────────┘
                                     Placed / Ready / Results / SetupFailed / Exited

Only the engine, in one thread, writes the ledger; workers compute and report.
The unit of scheduling is a *group*: a stage, or a chain of stages fused into
one worker (:mod:`conveyor.engine.fusion`). Each :meth:`Engine.turn`:

1. opens a reduce once nothing above it can produce more;
2. asks the scheduler how many workers each group should keep alive and
   starts or stops workers to match, within the budget (:mod:`.workerpool`);
3. hands out CPU leases, most urgent group first (:mod:`.scheduler`);
4. tops up every leased worker's window of tasks from the ledger, deepest
   stage first, except where the downstream queue is full (:mod:`.backpressure`);
5. polls the executor and records what came back in one ledger call per
   message: outputs and the rows they were routed to, retries after a
   back-off, failures with their tracebacks, a dead worker's current task
   failed with the reason and the rest handed back;
6. lets the watchdog kill workers whose current task ran past the stage's
   ``timeout`` or whose memory grew past its ``ram`` (:mod:`.watchdog`);
7. commits the ledger every few tens of milliseconds: durability is grouped,
   and a crash loses at most the last group, whose items simply run again.

Two front ends use it through its public lifecycle (:mod:`.front`): the
batch run turns it until a run is finished, the service for as long as it
serves requests. The per-stage counters live in memory and start from the
ledger, so the engine's memory does not grow with the number of items.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .. import codec
from ..errors import StageContractError
from ..executors.base import Executor, Exited, Placed, Ready, Results, SetupFailed
from ..ledger import blocks
from ..ledger.base import Claim, Ledger, Record, Status
from ..observe.events import EventLog
from ..observe.observer import Observer
from ..pipeline import Pipeline
from ..resources import Budget
from ..result import SETUPS
from ..store import Store
from ..worker.protocol import Running
from ..worker.runner import StageSpec, WorkerSpec
from . import heap
from .backpressure import Backpressure
from .barriers import Barriers
from .claims import claim_for
from .front import FrontEnd
from .fusion import fuse
from .scheduler import Load, plan
from .state import DriverCost, GroupState, StageState
from .watchdog import Watchdog
from .workerpool import Worker, WorkerPool

COMMIT_SECONDS = 0.05  # the longest a finished item waits to be durable
CONTROL_SECONDS = 0.05  # plan, start/stop workers and hand out leases at least this often
SETUP_FAILURES = 3  # setups failing in a row that mark a group as broken


class Engine:
    """Runs a pipeline's stages on workers, one turn at a time; see the module docstring."""

    def __init__(self, pipeline: Pipeline, run_dir: Path, executor: Executor, budget: Budget,
                 front: FrontEnd | None = None, progress: bool = False,
                 bench: bool = False) -> None:
        self.pipeline = pipeline
        self.run_dir = run_dir
        self.executor = executor
        self.budget = budget
        self.front = front or FrontEnd()
        self.progress = progress
        self.bench = bench
        self.store = Store(run_dir, fsync=False)  # synced once per commit, see commit()
        self.stages: dict[str, StageState] = {}
        self.groups: dict[str, GroupState] = {}
        self._fatal: StageContractError | None = None
        self._last_commit = 0.0
        self._dirty = True  # something happened that the control step should see now
        self._unsynced = False  # workers wrote files that must be on disk before the commit
        self._last_control = 0.0
        self._cost = DriverCost()
        self._ledger: Ledger
        self._events: EventLog
        self._pool: WorkerPool
        self._watchdog: Watchdog
        self.observer: Observer  # what the run is doing, for the people who run it
        self._barriers: Barriers
        self._pressure: Backpressure

    # -- lifecycle ---------------------------------------------------------------------------

    def check_fits(self) -> None:
        """Raise :class:`~conveyor.errors.BudgetError` naming a stage whose worker could
        never start: one the budget cannot hold, or (on a cluster) no node can."""
        for stage in self.pipeline.stages.values():
            self.budget.check_fits(stage.name, stage.resources)
            self.executor.check_fits(stage.name, stage.resources)

    def open(self, ledger: Ledger, events: EventLog, previous: dict[str, Any] | None = None
             ) -> None:
        """Take the ledger and event log; set up the workers' pool, the watchdog, the
        observer (``previous``: the run lock's last holder, for the run's start event),
        and the stages and groups; keep the heap this process frees (:mod:`.heap`)."""
        heap.keep_freed()
        self._ledger = ledger
        self._events = events
        self._pool = WorkerPool(self.executor, self.budget, events)
        self._watchdog = Watchdog(self._pool, self.executor, lambda name: self.pipeline[name],
                                  lambda group: self.groups[group].head.resources.ram)
        self.observer = Observer(self.pipeline, events, self.run_dir, self.progress, self.bench)
        self.observer.start(self.executor.name, self.budget, previous)
        self._build_groups()
        for name in self.stages:  # the counts are this run's
            self._ledger.set_meta(SETUPS + name, "[0, 0.0]")
        self._barriers = Barriers(self.pipeline, self.stages, self.run_dir, self.store)
        self._barriers.open(ledger, events)
        self._barriers.on_spill = self.observer.spilled
        self._pressure = Backpressure(self.stages, self.groups, self._barriers)

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    @property
    def events(self) -> EventLog:
        return self._events

    @property
    def fatal(self) -> StageContractError | None:
        """The contract breach that stops the run, once a stage broke its contract."""
        return self._fatal

    def prepared(self) -> None:
        """The front end has filled the ledger: read each stage's queue from it, commit."""
        self._count_pending()
        self.commit()
        self.observer.prepared(self._ledger.counts() if self.progress else None)

    def add_inputs(self, stage: str, items: list[tuple[str, bytes]]) -> None:
        """Queue ``(key, encoded value)`` inputs of ``stage`` while the engine runs."""
        self._ledger.add_inputs(stage, ((key, self.store.put(data, codec.digest(data)))
                                        for key, data in items))
        self.stages[stage].pending += len(items)
        self._dirty = True

    def _count_pending(self) -> None:
        pending = self._ledger.pending_counts()
        for name, state in self.stages.items():
            state.pending = pending.get(name, 0)
        self._dirty = True

    def workers_of(self, stage: str) -> list[Worker]:
        """The live workers that run ``stage`` (its group's)."""
        return self._pool.of(self.stages[stage].group)

    def finished(self) -> bool:
        """Whether nothing is pending or running and every reduce and group has run."""
        if any(s.pending or s.running for s in self.stages.values()):
            return False
        return self._barriers.finished()

    def close(self, interrupted: str | None = None, error: str | None = None,
              counted: bool = True) -> None:
        """Record the run's end (``counted``: with its final queues) and close the events."""
        self.observer.finish(interrupted, error, self.queues() if counted else None)
        self._events.close()

    def _build_groups(self) -> None:
        pipe = self.pipeline
        order = pipe.order()
        for group in fuse(pipe):
            members = []
            for name in group.stages:
                stage = pipe[name]
                state = StageState(
                    stage, group.name, order.index(name), ancestors=pipe.ancestors(name),
                    downstream=[s.name for s in pipe.downstream(name)],
                    barriers_below={n for n in pipe.descendants(name) if pipe[n].barrier})
                self.stages[name] = state
                members.append(state)
            specs = tuple(StageSpec(m.stage, pipe.routes(m.stage.name),
                                    tuple((s, pipe[s].reduce) for s in m.stage.side))
                          for m in members)
            spec = WorkerSpec(group.name, specs, str(self.run_dir), self.store.inline_limit,
                              fsync=not self.executor.same_machine)
            self.groups[group.name] = GroupState(group, members, spec,
                                                 call_seconds=self.executor.call_seconds)

    def start_early(self) -> None:
        """Start a worker for the group that takes the inputs while they are still being
        taken in, so its start-up (an interpreter, imports, a model's ``setup()``)
        overlaps that; the first control step keeps or stops it like any other.

        Only where that group surely has work: a first run, or one that left
        items pending. A rerun may find every input done and start no worker.
        """
        head = self.pipeline.root().name
        if (head in self._ledger.stage_fingerprints()
                and not self._ledger.pending_counts().get(head)):
            return
        group = next(g for g in self.groups.values() if g.members[0].stage.name == head)
        self._start_worker(group, time.time())

    def _start_worker(self, group: GroupState, now: float) -> Worker | None:
        """A new worker for ``group``, or None if its resources are not free now."""
        worker = self._pool.start(group.spec, now)
        if worker is not None:
            self.observer.worker_started(worker.id, group.name, self.executor.pid(worker.id))
        return worker

    # -- one turn ------------------------------------------------------------------------

    def turn(self, max_wait: float | None = None) -> None:
        """One turn of the loop; waits for workers at most ``max_wait`` seconds if idle."""
        now = time.time()
        if self._dirty or now - self._last_control >= CONTROL_SECONDS:
            self._control(now)
        busy = self._dispatch(now)
        wait = 0.0 if busy else self._idle_timeout(now)
        if max_wait is not None:
            wait = min(wait, max_wait)
        for event in self.executor.poll(wait):
            self._handle(event)
        now = time.time()
        self._watchdog.check(now)
        self._maybe_commit(now)

    def _control(self, now: float) -> None:
        """The scheduling step: reduces, worker targets, CPU leases."""
        self._dirty = False
        self._last_control = now
        self._cost.sample()
        self._barriers.control(self._count_pending)
        loads = self._loads(now)
        self._reconcile(loads, now)
        self._pool.assign_leases(loads, now)

    def _idle_timeout(self, now: float) -> float:
        waits = [s.wait_until - now for s in self.stages.values()
                 if s.pending and s.wait_until > now]
        return max(0.0, min([COMMIT_SECONDS, *waits]))

    def commit(self) -> None:
        """Make what was recorded durable: files the items refer to first, then their rows."""
        if self.store.take_wrote() or self._unsynced:
            self.store.sync()
            self._unsynced = False
        self._ledger.commit()

    def _maybe_commit(self, now: float) -> None:
        if now - self._last_commit >= COMMIT_SECONDS:
            self.commit()
            self._events.flush()
            self._last_commit = now
            workers = {name: len(self._pool.of(s.group)) for name, s in self.stages.items()}
            self.observer.step(self.queues(), workers)

    def queues(self) -> dict[str, dict[str, int]]:
        """Pending and running items per stage, as the engine counts them."""
        return {name: {"pending": s.pending, "running": s.running}
                for name, s in self.stages.items()}

    # -- what comes back from workers --------------------------------------------------------

    def _handle(self, event: Any) -> None:
        if isinstance(event, Results):
            self._unsynced |= event.wrote_files
            self._record(event.worker, event.records)
            self.observer.used(event.worker, event.usage)
            return
        self._dirty = True
        worker = self._pool.workers.get(event.worker)
        if isinstance(event, Exited):
            self._exited(event.worker, event.reason, event.running)
        elif worker is None:
            return
        elif isinstance(event, Placed):
            self._pool.placed(event.worker)
        elif isinstance(event, Ready):
            worker.ready = True
            worker.head_since = worker.idle_since = time.time()
            self._set_up(self.groups[worker.group], event.setup_s)
        elif isinstance(event, SetupFailed):
            self._setup_failed(worker, event.error, event.traceback)

    def _set_up(self, group: GroupState, seconds: float) -> None:
        """Count a worker's setup and what it cost, for the scheduler and the report."""
        tally = json.dumps(group.count_setup(seconds))
        for member in group.members:
            self._ledger.set_meta(SETUPS + member.stage.name, tally)

    def _record(self, worker_id: int, records: list[Record]) -> None:
        """Judge and record what a worker computed, in one ledger call."""
        worker = self._pool.workers.get(worker_id)
        if worker is None:
            return
        now = time.time()
        kept: list[Record] = []
        split: list[Claim] = []
        spans: dict[str, list[float]] = {}  # stage -> [seconds, items]
        for r in records:
            if r.item_id is not None:
                claim = worker.inflight.pop(r.item_id, None)
                if claim is None:
                    continue  # already settled (a timeout raced the result)
                if r.error in (blocks.SPLIT, blocks.UNFIT):
                    split.append(claim)
                    if r.error == blocks.UNFIT:
                        self.groups[worker.group].unfit = True
                    continue
            if r.status is Status.FAILED:
                r = self._judge(r, now)
            kept.append(r)
            span = spans.setdefault(r.stage, [0.0, 0])
            span[0] += r.ended - r.started
            span[1] += blocks.size(r.key)
        self._split(split)
        for name, (seconds, calls) in spans.items():
            state = self.stages[name]
            per_item = max(seconds / calls, 1e-6) / (state.stage.batch_size or 1)
            # a fifth of the way to each message's pace, more for one of many items (a
            # block): its pace says more than a few cold first calls did
            weight = 1 - 0.8 ** max(1.0, calls / 64)
            state.service = per_item if state.service is None else (
                (1 - weight) * state.service + weight * per_item)
            state.measured += calls
        self._apply(kept, f"w{worker_id}")
        self._cost.count(sum(blocks.size(r.key) for r in kept))  # per item, not per row
        worker.head_since = now
        if not worker.inflight:
            worker.idle_since = now
            self._dirty = True  # its lease may go to another group

    def _judge(self, r: Record, now: float) -> Record:
        """A failed call: the run stops on a contract breach; an error is retried while
        the stage's retries last, after a back-off that doubles each time."""
        if r.fatal:
            self._fatal = StageContractError(r.error)
            return r
        stage = self.stages[r.stage].stage
        if r.retryable and r.attempt <= stage.retries:
            return r._replace(status=Status.PENDING,
                              retry_at=now + stage.retry_backoff * 2 ** (r.attempt - 1))
        return r

    def _apply(self, records: list[Record], worker: str) -> None:
        """Write records to the ledger and keep the in-memory counters in step."""
        if not records:
            return
        records = self.front.shape(records)
        refused = {id(r.record): r.reason for r in self._ledger.record(records, worker)}
        applied = [r for r in records if id(r) not in refused]
        self.observer.recorded(applied)
        fused = {(r.stage, r.key) for r in applied if r.item_id is None}
        collided = []
        stages = self.stages
        for r in records:
            state = stages[r.stage]
            if refused and id(r) in refused:
                if r.item_id is not None:
                    collided.append(r._replace(status=Status.FAILED, outputs=[],
                                               error=refused[id(r)], traceback=None,
                                               retry_at=None))
                continue
            n = blocks.size(r.key)
            if r.item_id is not None:
                state.running -= n
            if r.status is Status.PENDING:
                state.pending += n
                self._events.emit("retry", stage=r.stage, key=r.key, attempt=r.attempt,
                                  error=r.error)
            elif r.status is Status.FAILED:
                self._events.emit("failed", stage=r.stage, key=r.key, attempts=r.attempt,
                                  error=r.error)
            for out in r.outputs:
                for target in out.targets:
                    if (target, out.key) not in fused:
                        if not stages[target].pending:
                            self._dirty = True  # new work for a stage that had none
                        stages[target].pending += blocks.size(out.key)
            self._barriers.changed(state)
        self.front.applied(applied, fused)
        if collided:  # the key collided: the producing item fails for good
            self._apply(collided, worker)

    def _setup_failed(self, worker: Worker, error: str, tb: str) -> None:
        """Tasks sent to a worker whose setup raised fail with that error.

        After SETUP_FAILURES in a row the group is taken as broken: every item
        waiting for it fails now with the setup error, instead of each one
        waiting for a worker that cannot start.
        """
        group = self.groups[worker.group]
        group.setup_failures += 1
        self._events.emit("setup_failed", group=worker.group, worker=worker.id, error=error)
        worker.kill_reason = "setup failed"
        self._fail_claims(worker, list(worker.inflight.values()), error, tb, retry=True)
        worker.inflight.clear()
        if group.setup_failures < SETUP_FAILURES:
            return
        now = time.time()
        for member in group.members:
            while member.pending:
                claims = self._ledger.claim(member.stage.name, 1000, f"w{worker.id}", now)
                if not claims:
                    break
                n = sum(blocks.size(c.key) for c in claims)
                member.pending -= n
                member.running += n
                self._fail_claims(worker, claims, error, tb, retry=False)

    def _fail_claims(self, worker: Worker, claims: list[Claim], error: str, tb: str | None,
                     retry: bool) -> None:
        now = time.time()
        records = []
        self._split([c for c in claims if blocks.is_block(c.key)])  # its items fail alone
        for claim in claims:
            if blocks.is_block(claim.key):
                continue
            r = Record(claim.stage, claim.key, claim.id, Status.FAILED, claim.attempt, now, now,
                       [], error, tb)
            records.append(self._judge(r, now) if retry else r)
        self._apply(records, f"w{worker.id}")

    def _exited(self, worker_id: int, reason: str, running: Running | None = None) -> None:
        """A worker is gone: the call it was in failed; the tasks it had not started, or
        finished without reporting, go back without using an attempt."""
        worker = self._pool.exited(worker_id, reason)
        self.observer.worker_gone(worker_id)
        if worker is None or not worker.inflight:
            return
        claims = list(worker.inflight.values())
        why = worker.kill_reason if worker.kill_reason not in (None, "stopped") else \
            f"worker {reason}"
        spec = self.groups[worker.group].spec
        if not self.executor.knows_running:  # assume the first task sent was running
            blamed = claims[: spec.batch_size or 1]
        elif running is None or running.item_id not in worker.inflight:
            blamed = []  # it died between calls
        else:
            at = list(worker.inflight).index(running.item_id)
            blamed = claims[at:at + running.count]
            stage = spec.stages[running.stage].stage.name
            if stage != blamed[0].stage:  # a fused stage below the task's
                why = f"{why} in stage {stage!r}"
        self._fail_claims(worker, blamed, why, None, retry=True)
        self._release([c for c in claims if c not in blamed])

    def _release(self, claims: list[Claim]) -> None:
        self._ledger.release([c.id for c in claims])
        self._requeued(claims)

    def _split(self, claims: list[Claim]) -> None:
        """Running blocks into pending item rows, their attempt not counted."""
        if not claims:
            return
        self._ledger.split([c.id for c in claims])
        self._requeued(claims)
        self._dirty = True

    def _requeued(self, claims: list[Claim]) -> None:
        """Count the items of running ``claims`` as pending again."""
        for claim in claims:
            n = blocks.size(claim.key)
            self.stages[claim.stage].running -= n
            self.stages[claim.stage].pending += n

    def stop(self, grace: float = 5.0) -> None:
        """Stop every worker (killing what has not exited after ``grace`` s); record what
        they finish, hand back what they did not start."""
        if not hasattr(self, "_pool"):
            return
        for worker in self._pool.workers.values():
            if not worker.ready and not worker.inflight:
                self.executor.stop(worker.id, kill=True)  # still starting: nothing to lose
        for event in self.executor.shutdown(grace=grace):
            if isinstance(event, Results):
                self._unsynced |= event.wrote_files
                self._record(event.worker, event.records)
                self.observer.used(event.worker, event.usage)
        for worker in list(self._pool.workers.values()):
            self._release(list(worker.inflight.values()))
            worker.inflight.clear()
            self._pool.exited(worker.id, "stopped with the run")

    # -- workers ------------------------------------------------------------------------------

    def _loads(self, now: float) -> dict[str, Load]:
        loads = {}
        for name, g in self.groups.items():
            ready = g.ready(now)
            head = g.members[0]
            held = self._barriers.held(head)
            if held:
                ready = 0
            in_fill = 1.0 if not head.stage.upstream else self._pressure.fill(head)
            cap = self._cost.workers_fed(g.service, len(g.members))
            if g.head.concurrency is not None:
                cap = min(cap or g.head.concurrency, g.head.concurrency)
            loads[name] = Load(
                name=name, resources=g.head.resources, ready=ready, running=g.running,
                workers=len(self._pool.of(name)), service=g.service,
                batch=g.head.batch_size or 1, cap=cap, depth=head.depth,
                throttled=self._pressure.room(g) <= 0, floor=g.head.min_workers,
                expected=(not g.pending and not held and not g.head.barrier
                          and self._pressure.fed(g)),
                in_fill=in_fill, out_fill=self._pressure.out_fill(g))
        return loads

    def _reconcile(self, loads: dict[str, Load], now: float) -> None:
        """Start and stop workers to match the plan's targets.

        An idle worker the plan no longer wants is kept a while (it may be
        wanted again soon) unless a group is waiting for room to start one.
        A worker whose setup takes longer than that while is kept for as long
        as work may still come to its group (its upstream pauses, a burst
        follows): stopping it would run its setup (a model load) again for
        every burst. A stage's own ``idle_timeout`` is kept to as given.
        """
        targets = plan(list(loads.values()), self._pool.live_budget)
        starved = False
        # Every group's first worker before any group's second: a stage whose first
        # workers take the CPUs must not keep the next stage from starting at all.
        for first in (True, False):
            for name, group in self.groups.items():
                want = min(targets[name], 1) if first else targets[name]
                for _ in range(want - len(self._pool.of(name))):
                    if self._start_worker(group, now) is None:
                        starved = True
                        break

        def wanted(worker: Worker) -> bool:
            group = self.groups[worker.group]
            alive = len(self._pool.of(worker.group))
            if alive <= group.head.min_workers:
                return True  # kept warm
            if not (self.front.open_ended or group.pending or group.running
                    or self._pressure.fed(group)):
                return False  # nothing left for it to do
            if alive <= targets[worker.group]:
                return True
            if starved:
                return False  # its resources may let the waiting group start
            if group.head.idle_timeout is not None:
                return now - worker.idle_since < group.head.idle_timeout
            idle_limit = self.front.idle_seconds
            if group.setup_cost > idle_limit and (group.pending or group.running
                                                  or self._pressure.fed(group)):
                return True
            return now - worker.idle_since < idle_limit

        self._pool.stop_idle(wanted, now)

    # -- handing out work ----------------------------------------------------------------------

    def _dispatch(self, now: float) -> bool:
        """Top up every leased worker's window; True if any task was sent."""
        sent = False
        for group in sorted(self.groups.values(), key=lambda g: -g.members[0].depth):
            if not group.pending:
                continue
            if self._barriers.held(group.members[0]):
                continue
            window = group.window
            for worker in self._pool.of(group.name):
                want = window - sum(blocks.size(c.key) for c in worker.inflight.values())
                # Top up by at least half a window, so claims and messages stay chunky.
                if not worker.can_take_work or want < max(1, window // 2):
                    continue
                want = min(want, self._pressure.room(group))
                if want <= 0:
                    break
                claims = claim_for(self._ledger, group, worker, want, now)
                if not claims:
                    break
                if group.head.barrier:
                    claims = [c._replace(ref=self._barriers.claims_ref(group.members[0], c.key))
                              for c in claims]
                if not worker.inflight:
                    worker.head_since = now
                for claim in claims:
                    worker.inflight[claim.id] = claim
                self.executor.send(worker.id, claims)
                sent = True
        return sent
