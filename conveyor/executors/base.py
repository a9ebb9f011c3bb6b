"""The executor interface: where stage code runs, and nothing about policy.

An executor starts workers for a stage, hands them tasks, reports what comes
back and notices when a worker dies. It never decides how many workers a
stage gets, which items go where, or whether a failure is retried: that is
the scheduler's and the driver's job, identical for every backend. A backend
implements the five abstract methods; :meth:`Executor.shutdown` is shared.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping, NamedTuple, Union

from ..ledger.base import Claim, Record
from ..resources import Resources
from ..worker.meter import Usage
from ..worker.protocol import Running
from ..worker.runner import WorkerSpec

#: Where an executor lends CPUs per task, its live workers may together declare this
#: many times the budget's CPUs (idle ones use none; the leases held never exceed it).
LIVE_FACTOR = 2


class Placed(NamedTuple):
    """A worker of an executor that places first (``places_first``) has its place: its
    setup may begin (:meth:`Executor.set_up`)."""

    worker: int


class Ready(NamedTuple):
    """A worker finished ``setup()`` and is taking tasks."""

    worker: int
    setup_s: float = 0.0  # how long its setup() took (what stopping it would cost again)


class Results(NamedTuple):
    """What a worker computed, in the order its tasks were sent (fused rows after
    their parent), as ledger records that the driver has yet to judge."""

    worker: int
    records: list[Record]
    wrote_files: bool = False  # the store must be synced before these are committed
    usage: Usage | None = None  # what the calls cost, where the executor measures it


class SetupFailed(NamedTuple):
    """A worker's ``setup()`` raised; the worker is exiting."""

    worker: int
    error: str
    traceback: str


class Exited(NamedTuple):
    """A worker is gone: stopped on request, or died (``reason`` says how).

    ``running`` is the call it was in when it went, where the executor can
    tell (None: between calls, or unknown).
    """

    worker: int
    reason: str
    running: Running | None = None


Event = Union[Placed, Ready, Results, SetupFailed, Exited]


class Executor(ABC):
    """Runs workers. Worker ids are unique for the executor's lifetime."""

    name = "base"
    #: Whether a worker can be killed from outside (timeouts, RAM limits).
    can_kill = True
    #: Whether an idle worker costs no CPU, so CPUs can be lent per task (see
    #: conveyor.engine.workerpool); False where workers reserve CPUs for life (Ray actors
    #: on a cluster of several nodes).
    lends_cpu = True
    #: Whether workers write the run directory on the driver's machine, so that one
    #: sync there before a commit makes their files durable (else they fsync each).
    same_machine = True
    #: Seconds of work the executor packs into one message to a worker, where a message
    #: has a cost of its own (a Ray actor call); 0 where tasks go as they are sent. A
    #: worker's window then holds a couple of such messages (see GroupState.window).
    call_seconds = 0.0
    #: Whether :meth:`start` only finds the worker a place (reporting :class:`Placed`)
    #: and its setup waits for :meth:`set_up`: where a place takes long and no CPU of
    #: the run's (a Ray actor scheduled by its cluster), the CPU lease that setup needs
    #: is not held meanwhile (see conveyor.engine.workerpool).
    places_first = False

    @abstractmethod
    def start(self, spec: WorkerSpec, env: Mapping[str, str]) -> int:
        """Start a worker for ``spec.stage`` with ``env`` set; return its id.

        Returns at once; the worker reports :class:`Ready` (or
        :class:`SetupFailed`) through :meth:`poll`. Tasks may be sent before
        it is ready; they wait for it.
        """

    def set_up(self, worker: int) -> None:
        """Begin the setup of a worker that reported :class:`Placed` (``places_first``
        executors only); it reports :class:`Ready` or :class:`SetupFailed` as usual."""
        raise NotImplementedError(f"{self.name} sets its workers up as it starts them")

    def check_fits(self, stage: str, res: Resources) -> None:
        """Raise :class:`~conveyor.errors.BudgetError` if no worker of ``stage`` could
        ever be placed. On one machine the budget's own check is the whole check."""

    @abstractmethod
    def send(self, worker: int, tasks: list[Claim]) -> None:
        """Queue ``tasks`` on ``worker``; it runs them in order."""

    @abstractmethod
    def poll(self, timeout: float) -> list[Event]:
        """Events since the last poll, waiting up to ``timeout`` seconds for one."""

    def wakeup(self) -> None:
        """Make a :meth:`poll` in progress in another thread (or the next one) return now.

        Executors that cannot be woken leave this as is; their callers poll with
        short timeouts.
        """

    @abstractmethod
    def stop(self, worker: int, kill: bool = False) -> None:
        """Ask ``worker`` to finish the tasks it holds and exit, or kill it now.

        Either way an :class:`Exited` event follows.
        """

    @abstractmethod
    def pid(self, worker: int) -> int | None:
        """The worker's process id where it has one on this machine (for RSS checks)."""

    def running(self, worker: int) -> Running | None:
        """The call the worker is in now, where the executor can tell (else None)."""
        return None

    #: Whether :attr:`Exited.running` and :meth:`running` are reported (else the
    #: driver assumes the first task it sent and has not heard back about was running).
    knows_running = False

    def shutdown(self, grace: float = 5.0) -> list[Event]:
        """Stop every worker: ask first, kill what has not exited after ``grace`` seconds.

        Returns the events other than exits that arrived meanwhile (results
        of tasks the workers finished), so the caller can still record them.
        """
        import time

        live = set(self.workers())
        for worker in live:
            self.stop(worker)
        seen: list[Event] = []
        deadline = time.monotonic() + grace
        while live:
            if time.monotonic() >= deadline:
                for worker in live:
                    self.stop(worker, kill=True)
                deadline = float("inf")
            for event in self.poll(0.05):
                if isinstance(event, Exited):
                    live.discard(event.worker)
                else:
                    seen.append(event)
        return seen

    @abstractmethod
    def workers(self) -> list[int]:
        """Ids of workers that have not exited yet."""
