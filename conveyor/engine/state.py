"""The engine's in-memory view of a run: per-stage and per-group counters, the driver's cost.

Counters start from the ledger and move with each claim and result, so they
stay the size of the pipeline, never of the input.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from ..ledger import blocks
from ..stage import Stage
from ..worker.runner import WorkerSpec
from .fusion import Group

WINDOW_SECONDS = 0.25  # each worker holds about this much work ahead of it
WINDOW_TASKS = 512  # ... and at most this many item rows
# ... and, where each message to a worker has a cost (Executor.call_seconds), at least
# this many messages' worth: the driver tops a window up once half of it is done, so a
# second message is still queued behind the running one when the first comes back.
WINDOW_CALLS = 2.4
BLOCK_SECONDS = 0.1  # a group runs whole blocks while a block's items take it no longer


@dataclass
class StageState:
    """What the engine knows of one stage: its queue, what runs, how fast it goes."""

    stage: Stage
    group: str
    depth: int
    pending: int = 0
    running: int = 0
    service: float | None = None  # seconds per item, smoothed
    measured: int = 0  # items its service was measured on
    wait_until: float = 0.0  # nothing claimable before (retry back-off)
    ancestors: set[str] = field(default_factory=set)
    downstream: list[str] = field(default_factory=list)
    barriers_below: set[str] = field(default_factory=set)  # reduces and groups


@dataclass
class GroupState:
    """A group (a stage or a fused chain) and the worker spec its workers run."""

    group: Group
    members: list[StageState]  # chain order
    spec: WorkerSpec
    setup_failures: int = 0  # in a row, without a worker getting ready
    setups: int = 0  # workers that got ready in this run
    setup_seconds: float = 0.0  # the time their setup() took, in all
    unfit: bool = False  # its outputs did not fit a block (see conveyor.ledger.blocks)
    met_blocks: bool = False  # it claimed or split a block in this run
    call_seconds: float = 0.0  # the work in one message to a worker (Executor.call_seconds)

    def count_setup(self, seconds: float) -> list[float]:
        """Count a worker that got ready after ``seconds`` of setup; the tally so far
        (workers set up, their setup seconds), as the ledger keeps it for the report."""
        self.setup_failures = 0
        self.setups += 1
        self.setup_seconds += seconds
        return [self.setups, round(self.setup_seconds, 3)]

    @property
    def setup_cost(self) -> float:
        """Mean seconds a worker's setup takes: what stopping one costs when work comes back."""
        return self.setup_seconds / self.setups if self.setups else 0.0

    @property
    def name(self) -> str:
        return self.group.name

    @property
    def head(self) -> Stage:
        return self.members[0].stage

    @property
    def pending(self) -> int:
        return sum(m.pending for m in self.members)

    @property
    def running(self) -> int:
        return sum(m.running for m in self.members)

    def ready(self, now: float) -> int:
        return sum(m.pending for m in self.members if m.wait_until <= now)

    @property
    def service(self) -> float | None:
        known = [m.service for m in self.members if m.service is not None]
        return sum(known) if known else None

    @property
    def takes_blocks(self) -> bool:
        """Whether its workers may take whole blocks (see :mod:`conveyor.ledger.blocks`):
        once a block's items are known to take them at most BLOCK_SECONDS, while its
        outputs fit blocks, and where every stage calls its code on one item alone
        with one upstream (no batches, barriers, or ``load()`` run ahead)."""
        service = self.service
        return (service is not None and self.paced and not self.unfit
                and service * blocks.TARGET <= BLOCK_SECONDS
                and not any(m.stage.barrier or m.stage.batch_size or m.stage.loads
                            or len(m.stage.upstream) > 1 for m in self.members))

    @property
    def paced(self) -> bool:
        """Whether its pace is known from enough items (the first calls are cold) to
        decide between blocks and item rows."""
        return self.members[0].measured >= blocks.SMALLEST

    @property
    def runs_blocks(self) -> bool:
        """Whether it takes blocks and has met some in this run: its windows and queues
        are then counted in blocks' worth of items."""
        return self.met_blocks and self.takes_blocks

    @property
    def window(self) -> int:
        """How many items a worker of the group holds: about WINDOW_SECONDS of work,
        or WINDOW_CALLS messages' worth where messages are longer (one until its
        speed is known, so slow items spread over workers; in at most WINDOW_TASKS
        rows, or four blocks' worth where it runs blocks), and
        two batches for a batch stage, one computing while the next is read. A
        stage with ``load()`` holds at least the batch computing, its ``prefetch``
        batches loaded ahead and one more, so its loader does not wait for the
        driver's next tasks while the driver waits for results."""
        head = self.head
        ahead = (head.prefetch + 2) * (head.batch_size or 1) if head.loads else 1
        if head.batch_size:
            return max(2 * head.batch_size, ahead)
        service = self.service
        if service is None:
            return ahead
        most = 4 * blocks.TARGET if self.runs_blocks else WINDOW_TASKS
        seconds = max(WINDOW_SECONDS, WINDOW_CALLS * self.call_seconds)
        return max(ahead, min(most, math.ceil(seconds / service)))


class DriverCost:
    """The driver's own CPU time per recorded row, measured as the run goes.

    A group whose worker needs less time per item than the driver spends
    handing it out and recording it cannot use many workers: they would wait
    for the driver and take CPU from it. :meth:`workers_fed` is how many it can
    keep busy.
    """

    def __init__(self) -> None:
        self.per_row: float | None = None
        self._cpu = time.process_time()
        self._rows = 0

    def count(self, rows: int) -> None:
        self._rows += rows

    def sample(self) -> None:
        if self._rows < 200:  # too few to say much
            return
        cpu = time.process_time()
        per_row = (cpu - self._cpu) / self._rows
        self.per_row = per_row if self.per_row is None else 0.7 * self.per_row + 0.3 * per_row
        self._cpu, self._rows = cpu, 0

    def workers_fed(self, service: float | None, rows_per_item: int) -> int | None:
        """How many workers of a group (``service`` s per item) the driver keeps busy,
        plus one, so a worker computes while another waits for its next tasks."""
        if service is None or self.per_row is None:
            return None
        return 1 + math.ceil(service / (self.per_row * rows_per_item))
