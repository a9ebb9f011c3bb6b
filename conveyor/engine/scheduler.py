"""The scheduling policy: which groups get worker processes, and which get the CPUs.

The driver describes every group (a stage, or stages fused together; see
:mod:`conveyor.engine.fusion`) as a :class:`Load` and asks two questions. Both
answers are pure functions of the loads, unit-tested without processes.

**How many workers should each group keep alive?** :func:`plan`. A group can
use at most as many workers as it has work for (ready plus in flight, in
batches; once its speed is known, one per second of work in hand), at most its
cap (``concurrency``, and how many workers the driver can keep fed), and at
least one as soon as work is on its way from upstream (so the worker is set up
before the work arrives). Every group first gets the workers it keeps warm
(``min_workers``); then every group with work gets one, then every group whose
work is on its way gets one (nearest first, with what is left); the rest are
handed out one at a time to the group with the most work per worker (items
times measured seconds per item; a group not yet measured counts at the mean of
the others), ties to the group further downstream, as long as the worker's
declared resources fit what is left. RAM and GPUs are held for a worker's whole
life. Where the executor lends CPUs per task (the local executor does), the CPU
figure here is a ceiling on live processes, a multiple of the real CPUs,
because an idle worker uses no CPU.

**Which workers may run now?** :func:`lease_order`. A worker computes only
while it holds a CPU lease, and the leases never add up to more than the CPU
budget. Leases go first to the group whose input queue is fullest and whose
output queue is emptiest (``in_fill - out_fill``): a stage that is holding up
its upstream, or whose downstream is about to run dry, runs first. Queues are
measured in time (a queue holding a couple of seconds of its stage's work is
full), so a slow stage needs few items queued and a fast one many. The first
stage's input never runs out (``in_fill`` is 1), so it runs exactly when its
downstream is hungry; a stage whose downstream queue is full is *throttled* and
takes nothing. A GPU worker keeps its lease for life, so the most expensive
device never waits for a CPU, except when it is idle and a waiting group cannot
get a lease otherwise (it may hold the CPUs the stage that feeds it needs).
When the most urgent group waits for a lease (or has work and no worker started
yet), the driver stops topping up a less urgent worker that has held its lease
past a short quantum; the lease passes on when that worker's tasks are done.
Work moves between stages this way within a fraction of a second, without
starting or stopping processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ..resources import Budget, Pool, Resources

URGENCY_MARGIN = 0.05  # how much more urgent a waiting group must be to take a lease
HORIZON = 1.0  # seconds of work in hand that justify one more worker


@dataclass(frozen=True)
class Load:
    """What the policy knows about one group at one moment."""

    name: str
    resources: Resources
    ready: int  # items it could take now
    running: int  # items in flight
    workers: int = 0
    service: float | None = None  # seconds per item per worker, measured
    batch: int = 1
    cap: int | None = None
    depth: int = 0  # position in graph order; larger is further downstream
    throttled: bool = False  # its downstream queue is full
    expected: bool = False  # work is on its way from upstream
    in_fill: float = 0.0  # how full its input queue is, 0..1 (1 for the first stage)
    out_fill: float = 0.0  # how full its fullest downstream queue is, 0..1
    floor: int = 0  # workers kept alive whatever the work (min_workers)

    def useful_workers(self) -> int:
        """How many workers this group could keep busy right now.

        One per batch of work in hand, or, once its speed is known, one per
        HORIZON seconds of it: a few quick items do not justify starting a
        process.
        """
        items = self.running if self.throttled else self.ready + self.running
        n = math.ceil(items / self.batch)
        if self.service is not None and n:
            n = min(n, max(1, math.ceil(items * self.service / HORIZON)))
        if n == 0 and self.expected:
            n = 1
        return min(n, self.cap) if self.cap is not None else n

    @property
    def urgency(self) -> float:
        """Positive when it holds its upstream up or its downstream runs dry."""
        return self.in_fill - self.out_fill


def plan(loads: list[Load], budget: Budget) -> dict[str, int]:
    """Live worker target for each group; see the module docstring."""
    targets = {load.name: 0 for load in loads}
    known = [load.service for load in loads if load.service]
    default_service = sum(known) / len(known) if known else 1.0
    pool = Pool(budget)
    useful = {load.name: load.useful_workers() for load in loads}

    def priority(load: Load) -> tuple[float, int]:
        items = load.running if load.throttled else load.ready + load.running
        work = max(items, 1) * (load.service or default_service)
        return (work / (targets[load.name] + 1), load.depth)

    has_work = [load for load in loads if (load.running if load.throttled
                                            else load.ready + load.running) > 0]
    expected = sorted((load for load in loads if load.expected and load not in has_work),
                      key=lambda load: load.depth)

    def give(candidates: list[Load], limit: Callable[[Load], int]) -> None:
        while True:
            fits = [load for load in candidates
                    if targets[load.name] < limit(load) and pool.fits(load.resources)]
            if not fits:
                return
            best = max(fits, key=priority)
            pool.acquire(best.resources)
            targets[best.name] += 1

    # The workers every group keeps warm; one for every group that has work, so
    # none is starved of a process; then one for each group whose work is on
    # its way, nearest first, so it is set up in time; then the rest to whoever
    # has the most work per worker.
    give(loads, lambda load: load.floor)
    give(has_work, lambda load: max(targets[load.name], min(1, useful[load.name])))
    for load in expected:
        if useful[load.name] and not targets[load.name] and pool.fits(load.resources):
            pool.acquire(load.resources)
            targets[load.name] = 1
    give(has_work, lambda load: max(targets[load.name], useful[load.name]))
    return targets


def lease_order(loads: list[Load]) -> list[Load]:
    """Groups that may run now (work ready, not throttled), most urgent first.

    A group with no worker yet comes before all others: it needs a lease to
    start one, and every stage with work should have its worker set up.
    """
    runnable = [load for load in loads if load.ready > 0 and not load.throttled]
    return sorted(runnable, key=lambda load: (load.workers > 0, -load.urgency, -load.depth))


def should_yield(waiting: Load, holder: Load) -> bool:
    """Whether a worker of ``holder`` should give its lease up for ``waiting``.

    Yes when ``waiting`` is clearly more urgent, when the holder cannot use it
    (throttled, or out of work), or when ``waiting`` has no worker at all yet:
    every stage with work gets its worker started and set up.
    """
    return (waiting.urgency > holder.urgency + URGENCY_MARGIN or holder.throttled
            or holder.ready == 0 or waiting.workers == 0)
