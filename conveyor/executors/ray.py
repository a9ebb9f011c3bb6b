"""The Ray executor: each worker is a Ray actor, anywhere in a Ray cluster.

::

     driver process (scheduler, ledger)                Ray actors (one per worker)
    ┌────────────────────────────────────┐           ┌──────────────────────────────┐
    │ start(): actor with num_cpus,      │─placed()─▶│ worker.actor.Actor           │
    │   num_gpus, memory, runtime_env    │           │   (Ray found it a place)     │
    │ set_up(): once leased a CPU        │──setup()─▶│   loads the group, setup()   │
    │ send(): one actor call per block   │──run()───▶│   run(n, block) -> records   │
    │   of tasks (or of batches)         │           │   (on one thread, in order)  │
    │ poll(): ray.wait on the calls' refs│◀──refs────│                              │
    └────────────────────────────────────┘           └──────────────────────────────┘

The engine, scheduler and ledger are the local executor's; only where the
code runs differs. A stage's custom resources (``resources={"node_b": 1}``)
are the actor's, so Ray places it only on a node that declares them.

The executor places first (``places_first``): Ray takes a while to find an actor a
place and a process (0.2 s for one of the processes it started ahead, most of a
second for one it starts then, on a busy machine), using none of the run's CPUs,
so the driver asks for every stage's first actor at once and leases it a CPU only
for its setup. Before, an actor held a lease from the start: a third stage's start
took the lease of an idle GPU stage, which then waited half a second with its work
queued (benchmarks/hetero.py on Ray, 0.91 of bound; 0.95 after).

An actor call carries a *block*: the tasks (or, in a batch stage, the
batches) sent to the worker at once, as many as make about CALL_SECONDS
of work at the pace the group's calls have shown so far (one until it is
known, so a slow stage keeps one task or one batch per call, and never
more than a tenth of the stage's ``timeout``; a worker's first calls hold
one, one, two, four... so the stage below is fed at once). Each worker holds
WINDOW_CALLS calls' worth of work, so one is queued behind the one running
(``call_seconds``). Calls run in order, so the
call at the head of a worker's queue is the one running. An actor that
dies (or is killed for a timeout or its memory) in a call of one task or
batch, with nothing else in flight, is blamed on that call. Otherwise
which task it was is unknown: the answers of calls it had finished go with
it, so none is blamed; the tasks become suspects, which go alone to an
actor with nothing else in flight, where a death names the task that
caused it.

An actor's CPUs are lent per call as a local worker's are (``lends_cpu``)
where the budget's CPUs fit on every node of the cluster, as on a single
machine: the actor reserves with Ray only 1/LIVE_FACTOR of its CPUs, which
is what the driver lets live workers declare, so Ray's own accounting
still fits each node, and the driver's CPU leases keep the CPUs in use
within the budget, which no node is smaller than. On a cluster of several
nodes whose budget is their sum, a lease counted cluster-wide would not
stop one node from being overcommitted, so each actor reserves all of its
CPUs for its whole life. (Either way the budget's CPUs are taken to be the
run's own, as the local executor takes the machine's.) An actor may live
on another machine, so it fsyncs the files it writes itself
(``same_machine = False``).
Ray sets ``CUDA_VISIBLE_DEVICES`` for actors that declare GPUs (other actors
see none, as local workers). The pinned thread counts are set by the actor
itself before the user's modules import, so that Ray can give it one of the
worker processes it starts ahead (about a second sooner than a process made
for it); a stage with its own ``env`` or environment (``requirements=``,
``python=``) needs a process started with them, so they travel in the
actor's ``runtime_env``. An actor's stdout and stderr go to
``<run_dir>/logs/<group>.log``, as a local worker's do. Timeouts are enforced
everywhere (by killing the actor); a stage's ``ram`` is a Ray reservation, and
is also enforced by measuring the actor's memory where it runs on the
driver's machine (the watchdog sees no process elsewhere). A stage no live
node can hold is refused before the run; an actor asked for later that no
live node can hold (the only nodes that could were lost) fails its setup
after PLACE_SECONDS with why, so the stage's items fail instead of waiting
for ever.

Without an address, the executor starts a local Ray instance sized to the
budget when the first worker starts, and stops it at the end of the run; a
Ray instance already initialised in the process is used and left running.
"""

from __future__ import annotations

import math
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping

from .. import envs
from ..errors import BudgetError, ExecutorUnavailable
from ..ledger.base import Claim
from ..ledger.blocks import is_block
from ..optional import require
from ..resources import Budget, Resources, format_size, parse_size
from ..worker import shipping
from ..worker.actor import Actor
from ..worker.protocol import READY, Running
from ..worker.runner import WorkerSpec
from .base import (
    LIVE_FACTOR,
    Event,
    Executor,
    Exited,
    Placed,
    Ready,
    Results,
    SetupFailed,
)

ray = require("ray", "ray", "the ray executor", ExecutorUnavailable)
from ray.exceptions import RayActorError, RayError  # noqa: E402  (Ray is there now)

WAIT_SECONDS = 0.05  # the longest one ray.wait blocks, so wakeup() is honoured soon
SETTLE_SECONDS = 30.0  # the longest an earlier call of a finished one may take to show
PLACE_SECONDS = 30.0  # an actor not placed after this long is checked against live nodes
# The work one actor call holds, once the group's pace is known. Each call costs Ray
# 1-5 ms between calls on a busy machine (its result out, the next call in), which the
# actor now spends while the stage runs the next call (see worker.actor); what is left
# per call is the driver's own (its ray.wait, records, the next call sent) and the stage
# below waiting for a whole call's outputs. With a plain actor a 20 ms stage ran at 0.76
# of its rate with 25 ms calls, 0.84 with 100 ms ones, 0.93 with 250 ms ones; with the
# actor's own thread 100 ms calls still lost 0.3 s of B's time per 1,000 items to 250 ms
# ones' 0.15 s (benchmarks/hetero.py on Ray). Longer calls hold outputs back from the
# next stage longer, and a worker that dies loses more.
CALL_SECONDS = 0.25
BLOCK_UNITS = 256  # ... in at most this many tasks (or batches)
TIMEOUT_SHARE = 10  # ... and at most this fraction (1/10) of the stage's timeout
_INIT = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             configure_logging=False)


@dataclass
class _Call:
    ref: Any
    block: list[list[Claim]]  # calls of the stage: a task each, or a batch each
    stage: int  # index of the tasks' stage in the group's chain
    isolated: bool = False  # holds a suspect: nothing else is in flight on its actor
    started: float = 0.0  # when it became the head of a ready worker's queue (0: not yet)

    @property
    def tasks(self) -> list[Claim]:
        return [task for tasks in self.block for task in tasks]


@dataclass
class _Worker:
    actor: Any
    spec: WorkerSpec
    setup: Any  # the placed() call's ref, then the setup call's, until each answers
    setup_args: tuple[bytes, Mapping[str, str]]  # what set_up() sends: spec, env
    placing: bool = True  # ``setup`` is still the placed() call's
    made: int = 0  # calls made for it so far (sent or held)
    calls: deque[_Call] = field(default_factory=deque)  # in flight, in the order sent
    held: deque[list[list[Claim]]] = field(default_factory=deque)  # blocks waiting for an
    #                                                       isolated call to be answered
    pid: int | None = None  # where the actor runs on this machine
    stopping: bool = False
    next_check: float = field(  # when to ask whether a node can still hold it, unready
        default_factory=lambda: time.monotonic() + PLACE_SECONDS)

    def begin_head(self) -> None:
        """Start the clock of the call at the head of the queue, once the actor is ready
        (until then it waits for setup, and a timeout must not count that)."""
        if self.calls and self.setup is None and self.calls[0].started == 0.0:
            self.calls[0].started = time.time()

    def head(self) -> Running | None:
        if not self.calls:
            return None
        call = self.calls[0]
        return Running(call.stage, call.tasks[0].id, len(call.tasks), call.started)


class RayExecutor(Executor):
    """Ray actors as workers; see the module docstring."""

    name = "ray"
    same_machine = False
    call_seconds = CALL_SECONDS
    places_first = True
    knows_running = True

    def __init__(self, address: str | None = None, budget: Budget | None = None) -> None:
        """Join the Ray cluster at ``address`` ("auto", "ray://host:port"), or start a
        local one with the CPUs, RAM and GPUs of ``budget`` (default: this machine's);
        either when the first worker starts, so a run with nothing to do costs no Ray
        start. A Ray instance already initialised in this process is used as it is."""
        self.address = address
        self.budget = budget
        self._owns_ray = False
        self._actor_class: Any = None
        self._workers: dict[int, _Worker] = {}
        self._calls: dict[Any, int] = {}  # outstanding ref -> worker id
        self._suspects: set[int] = set()  # task ids in flight on an actor that died
        self._pace: dict[str, float] = {}  # group -> seconds per task (or batch), smoothed
        self._lends: bool | None = None  # see lends_cpu
        self._events: list[Event] = []
        self._wake = threading.Event()
        self._next_id = 0
        self._host = socket.gethostname()

    def _connect(self) -> None:
        if not ray.is_initialized():
            if self.address is None:
                # Ray gets the budget as it is, so every stage that fits the budget can
                # be placed: declared GPUs too (as the local executor takes them), so GPU
                # stages schedule on a machine where Ray detects none.
                budget = self.budget or Budget.detect()
                ray.init(num_cpus=max(1, math.ceil(budget.cpus)), num_gpus=budget.gpus,
                         _memory=budget.ram, **_INIT)
            else:
                ray.init(address=self.address, **_INIT)
            self._owns_ray = True
        self._actor_class = ray.remote(Actor)

    def cluster_budget(self, cpus: float | None = None, ram: int | str | None = None,
                       gpus: int | None = None) -> Budget:
        """The cluster's budget: its total CPUs, memory and GPUs, each part overridden
        where given, and the custom resources its nodes declare (joins the cluster now)."""
        if self._actor_class is None:
            self._connect()
        total = ray.cluster_resources()
        self.budget = Budget(
            cpus=float(cpus if cpus is not None else total.get("CPU", 1)),
            ram=parse_size(ram) if ram is not None else int(total.get("memory", 0)),
            devices=tuple(str(i) for i in range(
                gpus if gpus is not None else int(total.get("GPU", 0)))),
            custom=_custom_resources(total))
        return self.budget

    @property
    def lends_cpu(self) -> bool:  # type: ignore[override]
        """Whether the budget's CPUs fit on every node (see the module docstring); decided
        once, when the driver asks at the start of the run."""
        if self._lends is None:
            if self.address is None and not ray.is_initialized():
                self._lends = True  # the one-node instance this starts, sized to the budget
            else:
                if self._actor_class is None:
                    self._connect()
                nodes = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]]
                need = self.budget.cpus if self.budget else sum(nodes)
                self._lends = bool(nodes) and min(nodes) >= need
        return self._lends

    def check_fits(self, stage: str, res: Resources) -> None:
        """An actor lives on one node: a stage that fits the cluster's budget (the sum of
        its nodes) but no live node would wait for ever, so it is refused by name. Not
        asked of the one-node instance this starts, which is the budget."""
        if self.address is None and not ray.is_initialized():
            return
        if self._actor_class is None:
            self._connect()
        why = self._unplaceable(stage, res)
        if why:
            raise BudgetError(why)

    def _unplaceable(self, stage: str, res: Resources) -> str | None:
        """Why no live node can hold an actor of ``stage``; None if one can."""
        declared = {name: amount for name, amount in (
            ("CPU", res.cpus), ("GPU", res.gpus), ("memory", res.ram), *res.custom) if amount}
        asks = {**declared, "CPU": self._actor_cpus(res)}  # what Ray is asked to place
        nodes = [n for n in ray.nodes() if n["Alive"]]
        if any(all(n["Resources"].get(name, 0) >= amount - 1e-9
                   for name, amount in asks.items()) for n in nodes):
            return None
        have = "; ".join(f"{n['NodeManagerAddress']} has " + " ".join(
            _describe(name, n["Resources"].get(name, 0)) for name in declared) for n in nodes)
        return (f"stage {stage!r} needs {res.describe()} on one node, and no live node of "
                f"the Ray cluster has that ({have}): declare less, or add a node that has it")

    def _actor_cpus(self, res: Resources) -> float:
        """The CPUs an actor reserves with Ray. Lent CPUs: the driver lets live workers
        declare LIVE_FACTOR x the budget's CPUs and leases no more than the budget, so
        Ray holds the share that keeps its count of the live actors within the node."""
        return res.cpus / LIVE_FACTOR if self.lends_cpu else res.cpus

    def start(self, spec: WorkerSpec, env: Mapping[str, str]) -> int:
        if self._actor_class is None:
            self._connect()
        res = spec.resources
        env_vars = dict(env)  # pinned threads, the stage's env, no devices for CPU stages
        if res.gpus:
            del env_vars["CUDA_VISIBLE_DEVICES"]  # Ray sets the devices it placed the actor on
        # The user's modules import as in the driver; in a stage's own environment the
        # driver's installed packages must not shadow the environment's versions.
        path = envs.forwarded_path(sys.path) if spec.python_env else list(sys.path)
        stage = spec.stages[0].stage
        # A stage's requirements=/python= become Ray's pip/py_executable fields; those, or
        # env= of its own, need a process started with them. Else the actor sets its
        # pinned env itself, in a process Ray started ahead (see the module docstring).
        runtime_env = envs.runtime_env(stage)
        started_with = runtime_env or stage.env
        actor = self._actor_class.options(
            num_cpus=self._actor_cpus(res), num_gpus=res.gpus, memory=res.ram or None,
            resources=dict(res.custom) or None,  # e.g. {"node_b": 1}: placed on such a node
            runtime_env={"env_vars": env_vars, **runtime_env} if started_with else None,
            max_restarts=0).remote(path)
        worker_id = self._next_id
        self._next_id += 1
        placed = actor.placed.remote()
        self._workers[worker_id] = _Worker(actor, spec, placed, (
            shipping.dumps(spec), {} if started_with else env_vars))
        self._calls[placed] = worker_id
        return worker_id

    def set_up(self, worker: int) -> None:
        w = self._workers.get(worker)
        if w is None or w.placing:
            return
        w.setup = w.actor.setup.remote(*w.setup_args)
        self._calls[w.setup] = worker

    def send(self, worker: int, tasks: list[Claim]) -> None:
        w = self._workers.get(worker)
        if w is None:
            return
        blocks = _blocks(tasks, w.spec.batch_size, self._suspects, self._per_call(w), w.made)
        w.made += len(blocks)
        w.held.extend(blocks)
        self._submit(worker)

    def _per_call(self, w: _Worker) -> int:
        """How many tasks (or batches) one call of ``w`` holds: CALL_SECONDS of work at
        the group's pace, within a TIMEOUT_SHARE of its stages' timeouts; one until the
        pace is known (a worker's first calls hold fewer: see :func:`_blocks`)."""
        pace = self._pace.get(w.spec.group)
        if pace is None:
            return 1
        limit = min([CALL_SECONDS, *(s.stage.timeout / TIMEOUT_SHARE
                                      for s in w.spec.stages if s.stage.timeout)])
        return max(1, min(BLOCK_UNITS, int(limit / max(pace, 1e-6))))

    def _submit(self, worker: int) -> None:
        """Send held calls to the actor; a call holding a suspect goes alone."""
        w = self._workers[worker]
        index = {s.stage.name: i for i, s in enumerate(w.spec.stages)}
        while w.held:
            isolated = any(t.id in self._suspects for tasks in w.held[0] for t in tasks)
            if w.calls and (isolated or w.calls[-1].isolated):
                break
            block = w.held.popleft()
            # Calls are numbered in the order sent (setup() is 0): those made, less those
            # still held, is this one's number.
            ref = w.actor.run.remote(w.made - len(w.held), block)
            w.calls.append(_Call(ref, block, index[block[0][0].stage], isolated))
            self._calls[ref] = worker
        w.begin_head()

    def wakeup(self) -> None:
        self._wake.set()

    def poll(self, timeout: float) -> list[Event]:
        self._stop_idle()
        self._check_placed()
        if not self._events and timeout > 0:
            if self._calls:
                ray.wait(list(self._calls), num_returns=1, timeout=min(timeout, WAIT_SECONDS))
            else:
                self._wake.wait(min(timeout, WAIT_SECONDS))
        self._wake.clear()
        if self._calls:
            done, _ = ray.wait(list(self._calls), num_returns=len(self._calls), timeout=0)
            finished = set(done)
            for ref in [r for r in self._calls if r in finished]:  # each worker's in send order
                if ref in self._calls:  # not dropped meanwhile with its dead worker
                    self._answer(self._calls.pop(ref), ref)
        self._stop_idle()
        events, self._events = self._events, []
        return events

    def _check_placed(self) -> None:
        """An actor still not ready PLACE_SECONDS after it was asked for, which no live
        node can hold (the only nodes that could have gone), fails its setup with why:
        it would wait for ever, and the run with it."""
        now = time.monotonic()
        for worker_id, w in list(self._workers.items()):
            if w.setup is None or now < w.next_check:
                continue
            w.next_check = now + PLACE_SECONDS
            why = self._unplaceable(w.spec.stages[0].stage.name, w.spec.resources)
            if why:
                self._events.append(SetupFailed(worker_id, why, ""))
                self._gone(worker_id, "no node can hold it", kill=True)

    def _answer(self, worker_id: int, ref: Any) -> None:
        """Turn one finished call into events, after the calls sent to its actor before it.

        An actor runs its calls one after another, but ``ray.wait`` may see a later
        one finish first (a death shows on every pending call at once): the earlier
        ones are settled first, so finished work counts and a death is blamed on
        the call that was running.
        """
        w = self._workers[worker_id]
        while ref != w.setup:  # nothing is sent before setup
            if w.setup is not None:
                earlier = w.setup
            elif w.calls and w.calls[0].ref != ref:
                earlier = w.calls[0].ref
            else:
                break
            ready, _ = ray.wait([earlier], timeout=SETTLE_SECONDS)
            if not ready:
                break  # not finished after all: ``ref`` did not fail by the actor's death
            self._calls.pop(earlier, None)
            self._answer_one(worker_id, earlier)
            if worker_id not in self._workers:
                return  # it died at that call; ``ref`` went with it
        self._answer_one(worker_id, ref)

    def _answer_one(self, worker_id: int, ref: Any) -> None:
        w = self._workers[worker_id]
        try:
            value = ray.get(ref)
        except RayError as exc:
            if ref == w.setup:  # never got ready: its runtime_env (pip ...) or start failed
                self._events.append(SetupFailed(worker_id, _setup_error(exc), ""))
                self._gone(worker_id, "setup failed", kill=True)
            elif isinstance(exc, RayActorError):
                self._gone(worker_id, f"died: {_first_line(exc)}", sure=False)
            else:  # the actor code itself broke: treat the worker as lost
                self._gone(worker_id, f"failed: {_first_line(exc)}", kill=True)
            return
        if ref == w.setup and w.placing:
            w.setup, w.placing = None, False  # no call goes to it before set_up()
            self._events.append(Placed(worker_id))
            return
        if ref == w.setup:
            w.setup = None
            if value[0] == READY:
                w.pid = value[1] if value[3] == self._host else None
                w.begin_head()
                self._events.append(Ready(worker_id, value[2]))
            else:
                self._events.append(SetupFailed(worker_id, value[1], value[2]))
                self._gone(worker_id, "setup failed", kill=True)
            return
        call = w.calls.popleft()
        assert call.ref == ref, "actor calls finish in the order they were sent"
        self._suspects.difference_update(t.id for t in call.tasks)
        records, wrote, usage, seconds = value
        if records and not is_block(call.tasks[0].key):  # a call of tasks, not a broken
            # actor's nor a ledger block's
            pace, last = self._pace.get(w.spec.group), seconds / len(call.block)
            self._pace[w.spec.group] = last if pace is None else 0.8 * pace + 0.2 * last
        self._events.append(Results(worker_id, records, wrote, usage))
        self._submit(worker_id)

    def _gone(self, worker_id: int, reason: str, kill: bool = False, sure: bool = True
              ) -> None:
        """``worker_id`` is gone; ``sure``: whether its head call is known to be what ran.

        An actor that dies unexpectedly takes the answers of calls it finished but
        had not yet sent back with it: with several calls in flight, which one
        killed it is unknown; in a call of several tasks (or batches), which of
        them it was is unknown. Then none is blamed; their tasks become suspects
        and run alone next time, where a death says exactly which one it was.
        """
        w = self._workers.pop(worker_id)
        running = w.head() if w.setup is None else None  # dead in setup: no task was running
        unsure = w.calls if not sure and len(w.calls) > 1 else \
            [w.calls[0]] if running is not None and len(w.calls[0].block) > 1 else []
        if unsure:
            self._suspects.update(t.id for call in unsure for t in call.tasks)
            running = None
        for call in w.calls:
            self._calls.pop(call.ref, None)
        if w.setup is not None:
            self._calls.pop(w.setup, None)
        if kill:
            ray.kill(w.actor, no_restart=True)
        self._events.append(Exited(worker_id, reason, running))

    def _stop_idle(self) -> None:
        """Workers asked to stop exit once their queued calls are answered."""
        for worker_id, w in list(self._workers.items()):
            if w.stopping and not w.calls and not w.held and w.setup is None:
                self._gone(worker_id, "exited", kill=True)

    def stop(self, worker: int, kill: bool = False) -> None:
        w = self._workers.get(worker)
        if w is None:
            return
        if kill:
            self._gone(worker, "killed", kill=True)
        else:
            w.stopping = True

    def pid(self, worker: int) -> int | None:
        w = self._workers.get(worker)
        return w.pid if w else None

    def running(self, worker: int) -> Running | None:
        w = self._workers.get(worker)
        return w.head() if w else None

    def workers(self) -> list[int]:
        return list(self._workers)

    def shutdown(self, grace: float = 5.0) -> list[Event]:
        """Stop every actor as the base does; then stop the Ray instance if this started it."""
        try:
            return super().shutdown(grace)
        finally:
            if self._owns_ray:
                ray.shutdown()
                self._owns_ray = False
                self._actor_class = None  # a later start joins or starts Ray again


def _blocks(tasks: list[Claim], batch_size: int | None, suspects: set[int], per_call: int,
            made: int = 0) -> list[list[list[Claim]]]:
    """Split tasks into actor calls of up to ``per_call`` calls of the stage each: one
    task per stage call, or one batch in a batch stage; a block holds one stage's.

    A worker's first calls hold fewer (``made``: the calls made for it before these):
    one, one, then twice as many each time up to ``per_call``. The stage below then
    gets its first outputs as soon as they are made, not a long call later; and the
    pace the first (cold) calls showed is checked on short ones.

    A task on its second attempt or later, or suspected of killing an actor, gets
    an actor call of its own (the runner runs it alone anyway), so that if it is
    what kills the actor, it alone is blamed; so does a ledger block.
    """
    blocks: list[list[list[Claim]]] = []
    growing = False  # whether the last block may take more tasks
    most = 1  # what the last block may hold
    for task in tasks:
        # a ledger block (hundreds of items) is a call's worth of work by itself
        alone = task.attempt > 1 or task.id in suspects or is_block(task.key)
        last = blocks[-1] if growing and not alone else None
        if last is not None and last[-1][0].stage == task.stage:
            if batch_size and len(last[-1]) < batch_size:
                last[-1].append(task)
                continue
            if len(last) < most:
                last.append([task])
                continue
        blocks.append([[task]])
        most = min(per_call, 2 ** min(max(made + len(blocks) - 2, 0), 16))
        growing = not alone
    return blocks


def _custom_resources(total: Mapping[str, float]) -> dict[str, float]:
    """The custom resources in Ray's cluster totals: not Ray's own (CPU, GPU, memory,
    object_store_memory), nor the ``node:<ip>`` and accelerator-type names Ray adds."""
    return {name: amount for name, amount in total.items()
            if name not in {"CPU", "GPU", "memory", "object_store_memory"}
            and not name.startswith(("node:", "accelerator_type:"))}


_DECLARED = {"CPU": "cpus", "GPU": "gpus"}  # Ray's resource names -> the stage's


def _describe(name: str, amount: float) -> str:
    """A node's amount of one of Ray's resources, named as a stage declares it (as
    :meth:`Resources.describe` writes a stage's): ``cpus=2``, ``ram=4 GiB``, ``node_b=1``."""
    if name == "memory":
        return f"ram={format_size(int(amount))}"
    return f"{_DECLARED.get(name, name)}={amount:g}"


def _setup_error(exc: BaseException, lines: int = 40) -> str:
    """Why an actor never got ready, with the tail of what Ray says (pip's output included)."""
    text = str(exc).strip().splitlines()
    return f"actor could not start: {_first_line(exc)}" + (
        "\n" + "\n".join(text[-lines:]) if len(text) > 1 else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
