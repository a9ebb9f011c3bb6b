"""The live workers of a run: their resources, CPU leases and lives.

The driver owns one :class:`WorkerPool`. It starts workers through the
executor when the plan asks for them and the budget has room, stops them when
they are no longer wanted, and hands out CPU leases (see
:mod:`conveyor.engine.scheduler`): a worker may be sent tasks only while it holds a
lease, and the leases held never add up to more CPUs than the budget. RAM
and GPUs are granted for a worker's whole life, from start to exit.

An executor that cannot lend CPUs per task (Ray actors reserve theirs for
life) gets every worker *pinned*: it holds its lease from start to exit, and
the live-process ceiling is then the real CPU budget.

A worker's start holds a lease too, for what its setup computes. Where the
executor first finds a worker its place (``Executor.places_first``: Ray schedules
an actor), the lease waits for :meth:`WorkerPool.placed`, and a waiting setup is
leased before anything else: a place can take most of a second and needs none of
the run's CPUs, and a lease held meanwhile kept other stages, a GPU stage among
them, from their work.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from ..executors.base import LIVE_FACTOR, Executor
from ..ledger.base import Claim
from ..observe.events import EventLog
from ..resources import Budget, Grant, Pool, Resources
from ..worker.protocol import pinned_env
from ..worker.runner import WorkerSpec
from .scheduler import Load, lease_order, should_yield

QUANTUM = 0.2  # seconds a lease is held before a more urgent group may take it
IDLE_SECONDS = 0.5  # an idle worker that is not wanted any more is stopped after this


def milli(resources: Resources | Budget) -> int:
    """CPUs in thousandths: leases add up and are compared as whole numbers."""
    return round(resources.cpus * 1000)


@dataclass
class Worker:
    """One live worker as the driver tracks it."""

    id: int
    group: str
    resources: Resources
    grant: Grant
    started: float
    pinned: bool  # holds its CPU lease for life (GPU workers; executors that cannot lend)
    placed: bool = True  # has its place; its setup needs a lease (Executor.places_first)
    ready: bool = False
    leased: bool = False
    lease_since: float = 0.0
    expiring: bool = False  # gives its lease up once its tasks are done
    draining: bool = False  # stops once its tasks are done
    kill_reason: str | None = None
    inflight: dict[int, Claim] = field(default_factory=dict)  # sent, in order; head runs
    head_since: float = 0.0  # when the task at the head began
    idle_since: float = 0.0

    @property
    def can_take_work(self) -> bool:
        return self.leased and not self.expiring and not self.draining \
            and self.kill_reason is None


class WorkerPool:
    """Starts, leases and stops workers; see the module docstring."""

    def __init__(self, executor: Executor, budget: Budget, events: EventLog) -> None:
        self.executor = executor
        self.events = events
        self.lends_cpu = executor.lends_cpu
        factor = LIVE_FACTOR if self.lends_cpu else 1
        self.live_budget = Budget(budget.cpus * factor, budget.ram, budget.devices,
                                  budget.custom)
        self.live = Pool(self.live_budget)
        self.cpu_total = milli(budget)
        self.cpu_free = self.cpu_total
        self.workers: dict[int, Worker] = {}

    def of(self, group: str) -> list[Worker]:
        """The group's workers that are not on their way out."""
        return [w for w in self.workers.values()
                if w.group == group and not w.draining and w.kill_reason is None]

    # -- lives ------------------------------------------------------------------------------

    def start(self, spec: WorkerSpec, now: float) -> Worker | None:
        """Start a worker for ``spec`` if its resources and a CPU lease are free now.

        Where the executor places first, the lease waits until the worker is placed,
        and a group's first worker starts without a free one, as long as the places
        being found add up to no more than the budget's CPUs (each may boot a process):
        every stage gets its place early, in parallel with the work. Further workers
        start when a lease is free that no worker being started will need.
        """
        res: Resources = spec.resources
        if not self.live.fits(res) or milli(res) > self._room_to_start(spec.group):
            return None
        grant = self.live.acquire(res)
        assert grant is not None
        env = pinned_env(res.threads, grant.devices, spec.stages[0].stage.env)
        worker_id = self.executor.start(spec, env)
        worker = Worker(worker_id, spec.group, res, grant, now,
                        pinned=res.gpus > 0 or not self.lends_cpu, head_since=now,
                        idle_since=now, placed=not self.executor.places_first)
        self.workers[worker_id] = worker
        if worker.placed:
            self._lease(worker, now)  # setup uses CPU too
        self.events.emit("worker_start", group=spec.group, worker=worker_id,
                         pid=self.executor.pid(worker_id), cpus=res.cpus, ram=res.ram,
                         gpus=res.gpus, devices=list(grant.devices), threads=res.threads)
        return worker

    def _room_to_start(self, group: str) -> int:
        """The CPUs (thousandths) a worker of ``group`` may need to start now (see
        :meth:`start`)."""
        if not self.executor.places_first:
            return self.cpu_free  # its lease, held from the start
        if self.of(group):  # a lease that no worker being started will need
            return self.cpu_free - self._starting(lambda w: not w.leased)
        return self.cpu_total - self._starting(lambda w: not w.placed)  # places being found

    def _starting(self, which: Callable[[Worker], bool]) -> int:
        """The CPUs (thousandths) of the workers not yet ready that ``which`` selects."""
        return sum(milli(w.resources) for w in self.workers.values() if not w.ready and which(w))

    def placed(self, worker_id: int) -> None:
        """A worker has its place: it is leased for its setup as soon as a CPU is free."""
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.placed = True
            self.events.emit("worker_placed", group=worker.group, worker=worker_id)

    def stop(self, worker: Worker, reason: str = "stopped", kill: bool = False) -> None:
        """Ask a worker to exit (or kill it); its exit is reported by the executor."""
        if worker.kill_reason is None:
            worker.kill_reason = reason
        self.executor.stop(worker.id, kill=kill)

    def exited(self, worker_id: int, reason: str) -> Worker | None:
        """Forget a worker that exited; its resources and lease go back."""
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return None
        self.live.release(worker.grant)
        self._unlease(worker)
        self.events.emit("worker_exit", group=worker.group, worker=worker_id,
                         reason=worker.kill_reason or reason)
        return worker

    def stop_idle(self, wanted: Callable[[Worker], bool], now: float) -> None:
        """Stop workers that are idle, not wanted, and were idle long enough (or finished)."""
        for worker in list(self.workers.values()):
            if worker.inflight or not worker.ready or worker.kill_reason is not None:
                continue
            if worker.draining or not wanted(worker):
                self.stop(worker)

    # -- CPU leases ------------------------------------------------------------------------

    def _lease(self, worker: Worker, now: float) -> None:
        if not worker.leased:
            self.cpu_free -= milli(worker.resources)
            worker.leased, worker.lease_since, worker.expiring = True, now, False
            self.events.emit("lease", group=worker.group, worker=worker.id,
                             cpus=worker.resources.cpus)

    def _unlease(self, worker: Worker) -> None:
        if worker.leased:
            self.cpu_free += milli(worker.resources)
            worker.leased = worker.expiring = False
            self.events.emit("unlease", group=worker.group, worker=worker.id)

    def assign_leases(self, loads: dict[str, Load], now: float) -> None:
        """Release idle leases, grant leases by urgency, and ask long holders to yield.

        A group that has work but no worker yet needs a lease to start one: its
        CPUs are kept back from the groups after it, so the start can happen.
        """
        for worker in self.workers.values():
            if worker.leased and not worker.pinned and worker.ready and not worker.inflight:
                self._unlease(worker)
        waiting: list[Load] = []
        for worker in self.workers.values():  # placed, its setup waiting for a lease: first
            if worker.placed and not worker.ready and not worker.leased and not worker.draining \
                    and worker.kill_reason is None:
                if milli(worker.resources) > self.cpu_free:
                    waiting.append(replace(loads[worker.group], workers=0))  # none set up
                    continue
                self._lease(worker, now)
                self.executor.set_up(worker.id)
        available = self.cpu_free
        for load in lease_order(list(loads.values())):
            need = milli(load.resources)
            mine = self.of(load.name)
            if not mine:
                if self.live.fits(load.resources) and not self.executor.places_first:
                    waiting.append(load)
                    available -= need  # kept for the start the driver will make
                continue
            wanted = load.useful_workers() - sum(w.leased for w in mine)
            for worker in (w for w in mine if w.ready and not w.leased):
                if wanted <= 0:
                    break
                if need > available:
                    waiting.append(load)
                    break
                self._lease(worker, now)
                available -= need
                wanted -= 1
        if waiting:
            self._make_room(waiting[0], loads, now)

    def _make_room(self, waiting: Load, loads: dict[str, Load], now: float) -> None:
        need = milli(waiting.resources)
        free = self.cpu_free + sum(milli(w.resources)
                                   for w in self.workers.values() if w.leased and w.expiring)
        holders = sorted((w for w in self.workers.values()
                          if w.leased and not w.pinned and not w.expiring and w.ready
                          and w.group != waiting.name and now - w.lease_since >= QUANTUM
                          and should_yield(waiting, loads[w.group])),
                         key=lambda w: loads[w.group].urgency)
        for worker in holders:
            if free >= need:
                return
            worker.expiring = True
            free += milli(worker.resources)
        if free >= need or not self.lends_cpu:
            return
        # Still no room: a pinned (GPU) worker with nothing to do gives its lease up
        # too. Otherwise it could hold the CPUs the stage feeding it needs, and wait
        # for work that stage can never make; it leases again when work arrives.
        for worker in self.workers.values():
            if (worker.pinned and worker.leased and worker.ready and not worker.inflight
                    and not loads[worker.group].ready and worker.group != waiting.name):
                self._unlease(worker)
                free += milli(worker.resources)
                if free >= need:
                    return
