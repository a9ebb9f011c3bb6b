"""The scheduling policy: how many workers each stage should have now.

The driver describes every stage as a :class:`StageLoad` (work waiting, work
in flight, live workers, measured service time, whether its downstream queue
is full) and :func:`plan` answers with a target worker count per stage. It is
a pure function of its inputs, so its decisions are unit-tested without
processes or clocks.

The policy, in order:

1. A stage can use at most as many workers as it has work for (ready plus in
   flight, in batches), and at most its ``concurrency``. A stage whose
   downstream queue is full (*throttled*) may not take new work, so it only
   keeps the workers its in-flight items need.
2. Slots are handed out one worker at a time, each to the stage with the most
   work per worker, where work is items times measured seconds per item (a
   stage not yet measured counts at the mean of the measured ones). Ties go
   to the stage further downstream, so items finish and memory stays flat.
3. A worker is only planned if its declared cpus, ram and gpus fit in what
   the budget has left: the sum over planned workers never exceeds it.

The driver turns targets into actions: it starts workers where a stage is
below target and the budget has room, and drains workers (no new tasks, stop
when their tasks are done) where a stage is above target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .resources import Budget, Pool, Resources


@dataclass(frozen=True)
class StageLoad:
    """What the policy knows about one stage at one moment."""

    name: str
    resources: Resources
    ready: int
    running: int
    workers: int = 0
    service: float | None = None  # seconds per item per worker, measured
    batch: int = 1
    cap: int | None = None
    depth: int = 0
    throttled: bool = False

    def useful_workers(self) -> int:
        """How many workers this stage could keep busy right now."""
        items = self.running if self.throttled else self.ready + self.running
        if items <= 0:
            return 0
        n = math.ceil(items / self.batch)
        return min(n, self.cap) if self.cap is not None else n


def plan(loads: list[StageLoad], budget: Budget) -> dict[str, int]:
    """Target worker count for each stage; see the module docstring."""
    targets = {load.name: 0 for load in loads}
    known = [load.service for load in loads if load.service]
    default_service = sum(known) / len(known) if known else 1.0
    pool = Pool(budget)
    useful = {load.name: load.useful_workers() for load in loads}

    def priority(load: StageLoad) -> tuple[float, int]:
        items = load.running if load.throttled else load.ready + load.running
        work = items * (load.service or default_service)
        return (work / (targets[load.name] + 1), load.depth)

    while True:
        candidates = [load for load in loads
                      if targets[load.name] < useful[load.name] and pool.fits(load.resources)]
        if not candidates:
            return targets
        best = max(candidates, key=priority)
        pool.acquire(best.resources)
        targets[best.name] += 1
