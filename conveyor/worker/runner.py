"""Running a group's code on tasks: the part every executor shares.

A :class:`GroupRunner` lives wherever a group's code runs (the driver's own
process for the inline executor, a worker process, a Ray actor). It runs each
stage's ``setup()`` once, then turns tasks (ledger claims) into ledger
:class:`~conveyor.ledger.Record` s: it decodes each input (and passes it
through the stage's own ``load(value)``, where a class stage has one: the
worker's prefetch thread runs both ahead of the calls), calls the user's code with its
context, names the outputs (``parent/0`` for a generator's children), encodes
and stores them, and evaluates the downstream ``when=`` predicates so the
driver only records. In a fused group an output bound for the next stage of
the chain is carried straight into it, and its outcome follows its parent's.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import orjson

from .. import codec
from ..context import Context, activate, deactivate
from ..envs import EnvSpec
from ..errors import StageContractError
from ..items import Item, check_key
from ..ledger import blocks
from ..ledger.base import Claim, Gather, Output, Record, Status
from ..stage import Route, Stage, group_of
from ..store import INLINE_LIMIT, Store, Stored
from ..validation import ValidationFailed, boundary
from .meter import Meter
from .sides import Sides

DONE, ROUTED_OUT, FAILED = Status.DONE, Status.ROUTED_OUT, Status.FAILED


@dataclass(frozen=True)
class StageSpec:
    """One stage as a worker sees it: its code and where its outputs may go."""

    stage: Stage
    routes: tuple[Route, ...]
    sides: tuple[tuple[str, bool], ...] = ()  # (side stage, whether it is a reduce)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to run a group, picklable with cloudpickle."""

    group: str
    stages: tuple[StageSpec, ...]  # chain order
    run_dir: str
    inline_limit: int = INLINE_LIMIT
    fsync: bool = False  # True where the driver cannot sync the run dir's filesystem

    @property
    def batch_size(self) -> int | None:
        return self.stages[0].stage.batch_size

    @property
    def resources(self) -> Any:
        return self.stages[0].stage.resources

    @property
    def python_env(self) -> EnvSpec | None:
        """The group's own Python environment (fused stages share one), or None."""
        return EnvSpec.of(self.stages[0].stage)

    def targets(self) -> list[tuple[str, str, str]]:
        """(stage, module, qualname) of each stage's code, to name what fails to import."""
        return [(s.stage.name, getattr(s.stage.target, "__module__", "?"),
                 getattr(s.stage.target, "__qualname__", repr(s.stage.target)))
                for s in self.stages]


class Loaded(NamedTuple):
    """A task with its input decoded ahead of the call (or the error decoding it)."""

    task: Claim
    value: Any
    error: BaseException | None
    size: int = 0  # bytes of the encoded input


_NO_KEY = object()


class KeyFailed(Exception):
    """A group's call for one key raised; the partition fails naming the key."""

    def __init__(self, message: str, tb: str) -> None:
        super().__init__(message)
        self.traceback = tb


class RoutingError(Exception):
    """A downstream ``when=`` predicate raised on this item's output."""


class StageRunner:
    """Calls one stage's code."""

    def __init__(self, spec: StageSpec, store: Store, run_dir: str) -> None:
        self.stage: Stage = spec.stage
        self.routes = spec.routes
        self.store = store
        self.run_dir = run_dir
        self.logger = logging.getLogger(f"conveyor.stage.{self.stage.name}")
        self._call: Any = None
        self._load: Any = None  # a class stage's load(value), bound once it is set up
        self._takes_ctx = self.stage.takes_ctx  # inspected once, not per item
        self._is_generator = self.stage.is_generator
        self.boundary = boundary(self.stage)
        self.sides = Sides(run_dir, store, dict(spec.sides)) if spec.sides else None
        # What each call of the user's code runs inside: where no watchdog can kill the
        # worker (the inline executor), a deadline that interrupts it (see executors.inline).
        self.limit: Callable[[], contextlib.AbstractContextManager[Any]] | None = None
        # Routes that read no value (no when=, no by=) send every output to the same
        # place: worked out once, not per output (a no-op stage's largest cost)
        self._fixed_route = (None if any(r.when or r.by for r in self.routes)
                             else _route_of(self.routes, None))

    def setup(self) -> None:
        """Instantiate a class stage and run its ``setup()``; once per worker."""
        if self.stage.is_class:
            obj = self.stage.target()
            setup = getattr(obj, "setup", None)
            if callable(setup):
                setup()
            self._call = obj
            if self.stage.loads:
                self._load = obj.load
        else:
            self._call = self.stage.target

    def load(self, task: Claim) -> Loaded:
        """Read and decode a task's input, then run the stage's own ``load(value)`` on it
        if it has one (a prefetch thread calls this ahead of time)."""
        if self.stage.barrier:  # reads its file when called
            return Loaded(task, None, None)
        try:
            data = self.store.get(task.data, task.ref)
            if blocks.is_block(task.key):  # (key, value) of each item of the block
                return Loaded(task, [(key, codec.decode(self.store.get(None, ref))
                                      if ref is not None else value)
                                     for key, value, ref, _ in blocks.elements(data)],
                              None, len(data))
            value = codec.decode(data)
            if self._load is not None:
                value = self._load(value)
            return Loaded(task, value, None, len(data))
        except Exception as exc:  # a bad value or a raising load() fails the item, not the worker
            return Loaded(task, None, exc)

    def _context(self, keys: list[str], attempt: int) -> Context:
        return Context(self.stage.name, keys, attempt, self.stage.resources, self.store,
                       self.logger, self.sides)

    def _invoke(self, arg: Any, ctx: Context, key: Any = _NO_KEY) -> Any:
        args = (arg, ctx) if self._takes_ctx else (arg,)
        if key is not _NO_KEY:  # a group's call: fn(key, values[, ctx])
            args = (key, *args)
        token = activate(ctx)
        try:
            if self.limit is None:  # a `with` costs as much as a no-op stage's call
                return self._body(args)
            with self.limit():
                return self._body(args)
        finally:
            deactivate(token)

    def _body(self, args: tuple[Any, ...]) -> Any:
        result = self._call(*args)
        # a generator's body runs here, inside the context (and the limit)
        return list(result) if self._is_generator else result

    def _record(self, task: Claim, status: Status, outputs: list[Output], error: str | None,
                tb: str | None, started: float, fatal: bool = False,
                ended: float | None = None, retryable: bool = True) -> Record:
        # tuple.__new__: a named tuple's own constructor is Python, and this runs per item
        return tuple.__new__(Record, (self.stage.name, task.key, task.id, status, task.attempt,
                                      started, ended or time.time(), outputs, error, tb, None,
                                      None, fatal, retryable))

    def call_one(self, item: Loaded) -> Record:
        """Call the stage on one value."""
        task = item.task
        started = time.time()
        try:
            if item.error is not None:
                raise item.error
            if self.stage.reduce:
                ctx = self._context([task.key], task.attempt)
                produced = [_keyed(task.key, self._invoke(self._gathered(task), ctx))]
                outputs, status = self._outputs(produced, task.key)
            elif self.stage.group:
                outputs, status = self._outputs(self._call_groups(task), task.key)
            else:
                outputs, status = self.produce(task.key, item.value, task.attempt)
        except StageContractError as exc:
            return self._record(task, FAILED, [], str(exc), None, started, fatal=True)
        except ValidationFailed as exc:
            return self._record(task, FAILED, [], str(exc), None, started, retryable=False)
        except KeyFailed as exc:
            return self._record(task, FAILED, [], str(exc), exc.traceback, started)
        except Exception as exc:
            return self._record(task, FAILED, [], _describe(exc), traceback.format_exc(), started)
        return self._record(task, status, outputs, None, None, started)

    def produce(self, key: str, value: Any, attempt: int) -> tuple[list[Output], Status]:
        """The outputs of the stage called on one item's decoded value, and its status;
        raises what the call or its outputs raise (:meth:`call_one` records it)."""
        ctx = self._context([key], attempt)
        if self.boundary.takes is not None:
            value = self.boundary.check_input(self.stage.name, value)
        if self._is_generator:
            return self._outputs([_keyed(f"{key}/{i}", v)
                                  for i, v in enumerate(self._invoke(value, ctx))], key)
        return self._outputs([_keyed(key, self._invoke(value, ctx))], key)

    def call_batch(self, loaded: list[Loaded]) -> list[Record]:
        """Call a batch stage once on the values of ``loaded``.

        Items whose input cannot be read, or does not fit the stage's
        annotation, fail on their own and stay out of the call; an output that
        does not fit fails only its item.
        """
        started = time.time()
        records: list[Record] = []
        good: list[tuple[Loaded, Any]] = []
        for item in loaded:
            if item.error is not None:
                records.append(self.call_one(item))
                continue
            try:
                good.append((item, self.boundary.check_input(self.stage.name, item.value)))
            except ValidationFailed as exc:
                records.append(self._record(item.task, FAILED, [], str(exc), None, started,
                                            retryable=False))
        return records + self._call_values(good, started)

    def _call_values(self, good: list[tuple[Loaded, Any]], started: float) -> list[Record]:
        """One call of the stage on ``good``; where it raises, each half is called again.

        Halving isolates the value that breaks a batch in a few calls (a batch
        of 32 with one bad value: 11 calls), so its batch-mates do not fail with it.
        """
        if not good:
            return []
        keys = [item.task.key for item, _ in good]
        try:
            ctx = self._context(keys, max(item.task.attempt for item, _ in good))
            results = self._invoke([value for _, value in good], ctx)
            if not isinstance(results, (list, tuple)) or len(results) != len(good):
                got = (f"{len(results)} values" if isinstance(results, (list, tuple))
                       else f"a {type(results).__name__}")
                raise StageContractError(
                    f"stage {self.stage.name!r} is a batch stage: it was called with "
                    f"{len(good)} values and must return a list of {len(good)}, got {got}")
        except StageContractError as exc:
            ended = time.time()  # one call: every item of it shares its start and end
            return [self._record(i.task, FAILED, [], str(exc), None, started, True, ended)
                    for i, _ in good]
        except Exception as exc:
            if len(good) > 1:
                half = len(good) // 2
                return (self._call_values(good[:half], time.time())
                        + self._call_values(good[half:], time.time()))
            text, tb = _describe(exc), traceback.format_exc()
            return [self._record(good[0][0].task, FAILED, [], text, tb, started,
                                 ended=time.time())]
        ended = time.time()
        records: list[Record] = []
        for (item, _), key, result in zip(good, keys, results):
            try:
                outputs, status = self._outputs([_keyed(key, result)], key)
            except StageContractError as exc:
                records.append(self._record(item.task, FAILED, [], str(exc), None, started,
                                            True, ended))
            except ValidationFailed as exc:
                records.append(self._record(item.task, FAILED, [], str(exc), None, started,
                                            ended=ended, retryable=False))
            else:
                records.append(self._record(item.task, status, outputs, None, None, started,
                                            ended=ended))
        return records

    def _call_groups(self, task: Claim) -> list[tuple[str, Any]]:
        """A group's partition: the stage called once per key, over that key's values."""
        produced: list[tuple[str, Any]] = []
        for gkey, values in self._grouped(task):
            ctx = self._context([gkey], task.attempt)
            try:
                result = self._invoke(values, ctx, key=gkey)
            except Exception as exc:
                raise KeyFailed(f"key {gkey!r}: {_describe(exc)}", traceback.format_exc()) from exc
            if self._is_generator:
                produced.extend(_keyed(f"{gkey}/{i}", v) for i, v in enumerate(result))
            else:
                produced.append(_keyed(gkey, result))
        return produced

    def _grouped(self, task: Claim) -> Iterator[tuple[str, Iterator[Any]]]:
        """A partition file's keys, each with an iterator over its values (in order)."""
        assert task.ref is not None
        with open(Path(self.run_dir) / task.ref, "rb") as fh:
            rows = (line.rstrip(b"\n").split(b"\t", 1) for line in fh)
            for gkey, same in itertools.groupby(rows, key=lambda row: row[0]):
                yield orjson.loads(gkey), (self._value(data) for _, data in same)

    def _value(self, data: bytes) -> Any:
        """A value as a gather file holds it: inline, or ``@ref``."""
        if data.startswith(b"@"):
            data = self.store.get(None, data[1:].decode())
        return codec.decode(data)

    def _gathered(self, task: Claim) -> Iterator[Any]:
        """A reduce's input: the gather file the driver wrote, one value per line."""
        assert task.ref is not None
        with open(Path(self.run_dir) / task.ref, "rb") as fh:
            for line in fh:
                yield self.boundary.check_input(self.stage.name,
                                                self._value(line.rstrip(b"\n")))

    def _outputs(self, produced: Iterable[tuple[str, Any]], key: str
                 ) -> tuple[list[Output], Status]:
        outputs = []
        checked = self.boundary.returns is not None
        taken = False  # whether any output goes anywhere
        for out_key, value in produced:
            if checked:
                value = self.boundary.check_output(self.stage.name, value)
            try:
                data = codec.encode(value)
            except codec.EncodeError as exc:
                raise StageContractError(
                    f"stage {self.stage.name!r} returned an unserialisable output for item "
                    f"{key!r}: {exc}") from None
            targets, gathers = self._route(value)
            taken = taken or bool(targets or gathers)
            outputs.append(tuple.__new__(Output, (out_key, self.store.put(data), targets,
                                                  gathers)))
        routed_out = bool(self.routes) and bool(outputs) and not taken
        return outputs, ROUTED_OUT if routed_out else DONE

    def _route(self, value: Any) -> tuple[tuple[str, ...], tuple[Gather, ...]]:
        if self._fixed_route is not None:
            return self._fixed_route
        return _route_of(self.routes, value)


class GroupRunner:
    """Runs a group: one stage, or a fused chain carried item by item."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.store = Store(spec.run_dir, spec.inline_limit, spec.fsync)
        self.runners = {s.stage.name: StageRunner(s, self.store, spec.run_dir)
                        for s in spec.stages}
        names = [s.stage.name for s in spec.stages]
        self._next = dict(zip(names, names[1:]))
        self._index = {name: i for i, name in enumerate(names)}
        self.batch_size = spec.batch_size or 1
        self.batch_wait = spec.stages[0].stage.batch_wait
        #: Called before each call as ``note(stage_index, item_id, count)``, and with
        #: ``(-1, -1, 0)`` when a run is over: a worker keeps where it is, so that
        #: if it dies, the driver knows which task killed it.
        self.note: Callable[[int, int, int], None] = lambda stage, item, count: None
        self.meter = Meter()  # CPU and wall seconds of each stage's calls

    def setup(self) -> float:
        """Every stage's ``setup()``, in chain order; the seconds they took (what a worker
        reports as Ready: what stopping it would cost again)."""
        began = time.monotonic()
        for runner in self.runners.values():
            runner.setup()
        return time.monotonic() - began

    def setup_failed(self, exc: BaseException) -> tuple[str, str]:
        """What a worker reports of a ``setup()`` that raised ``exc`` (called where it is
        caught): a line naming the group, and the traceback."""
        return (f"setup of {self.spec.group!r} failed: {type(exc).__name__}: {exc}",
                traceback.format_exc())

    def load(self, task: Claim) -> Loaded:
        return self.runners[task.stage].load(task)

    @property
    def loads(self) -> bool:
        """Whether the group's first stage has its own ``load(value)`` to run ahead."""
        return self.spec.stages[0].stage.loads

    @property
    def prefetch(self) -> int:
        """Tasks a worker loads ahead of its calls when the stage has ``load()``: the
        stage's ``prefetch`` batches."""
        return self.spec.stages[0].stage.prefetch * self.batch_size

    def run(self, loaded: list[Loaded]) -> list[Record]:
        """Records of loaded tasks, each followed by those of the rows fused below it.

        In a batch stage, an item on its second attempt or later runs in a batch
        of its own: if it is what broke its batch, it breaks nothing else.
        """
        try:
            if self.spec.batch_size:
                return self._run_batches(loaded)
            records: list[Record] = []
            for item in loaded:
                if blocks.is_block(item.task.key):
                    records.extend(self._run_block(item))
                    continue
                self.note(self._index[item.task.stage], item.task.id, 1)
                stage = item.task.stage
                self._carry(self.meter.measure(stage, self.runners[stage].call_one, item),
                            item.task.id, records)
            return records
        finally:
            self.note(-1, -1, 0)

    def _run_batches(self, loaded: list[Loaded]) -> list[Record]:
        stage = loaded[0].task.stage
        runner = self.runners[stage]
        fresh = [item for item in loaded if item.task.attempt <= 1]
        records: list[Record] = []
        if fresh:
            self.note(self._index[stage], fresh[0].task.id, len(fresh))
            records = self.meter.measure(stage, runner.call_batch, fresh)
        for item in loaded:
            if item.task.attempt > 1:
                self.note(self._index[stage], item.task.id, 1)
                records.extend(self.meter.measure(stage, runner.call_batch, [item]))
        return records

    def _carry(self, record: Record, task_id: int, into: list[Record]) -> None:
        into.append(record)
        nxt = self._next.get(record.stage)
        if nxt is None or record.status is FAILED:
            return
        runner = self.runners[nxt]
        for out in record.outputs:
            if nxt in out.targets:
                child = Claim(None, nxt, out.key, 1, out.value.data, out.value.ref)  # type: ignore[arg-type]
                self.note(self._index[nxt], task_id, 1)  # its row has no id yet: the task's
                record = self.meter.measure(nxt, runner.call_one, runner.load(child))
                self._carry(record, task_id, into)


    def _run_block(self, item: Loaded) -> list[Record]:
        """A block's records: one per stage of the chain from its row's, outputs packed
        (and routed on as a block), except where a reduce or a group gathers them.

        Each item is called on its own, as in a row of its own. Where the block
        cannot be recorded whole (an item failed, or a stage's outputs are not
        one per item under its key, each going where the others go), the
        record says so and the driver splits the block into item rows, which
        run again: see :mod:`conveyor.ledger.blocks`.
        """
        task = item.task
        if item.error is not None:
            return [self._hand_back(task, blocks.SPLIT)]
        values: list[tuple[str, Any]] = item.value
        stage: str | None = task.stage
        records: list[Record] = []
        item_id: int | None = task.id
        attempt = task.attempt
        while stage is not None:
            runner, nxt = self.runners[stage], self._next.get(stage)
            started = time.time()
            made = self.meter.measure(stage, self._block_stage, runner, task, attempt, values)
            if isinstance(made, str):
                return [self._hand_back(task, made)]
            status, outputs = made
            ended = time.time()
            targets = outputs[0].targets if outputs else ()
            if outputs and outputs[0].gathers:
                # gathered by a reduce or a group, which read each value: each its own
                records.append(Record(stage, task.key, item_id, status, attempt, started,
                                      ended, outputs))
                break
            # packed, to the next stage of the chain or, as a block again, to the stages
            # of other groups that every item goes to
            packed = blocks.pack((o.key, o.value.data, o.value.ref, None) for o in outputs)
            records.append(Record(stage, task.key, item_id, status, attempt, started, ended,
                                  [Output(task.key, Stored(packed, None, None, len(packed)),
                                          targets)]))
            if targets != (nxt,):
                break
            values = [(o.key, codec.decode(self.store.get(o.value.data, o.value.ref)))
                      for o in outputs]
            stage, item_id, attempt = nxt, None, 1
        return records

    def _block_stage(self, runner: "StageRunner", task: Claim, attempt: int,
                     values: list[tuple[str, Any]]) -> tuple[Status, list[Output]] | str:
        """One stage called on each item of a block: the status they share and one output
        each, or why the block must be split."""
        name = runner.stage.name
        index = self._index[name]
        # Where the stage has a timeout, each item is noted when it starts: the watchdog
        # times the item, not the block. Else the block's start will do.
        each = runner.stage.timeout is not None
        self.note(index, task.id, 1)
        outputs: list[Output] = []
        status: Status | None = None
        routes: tuple[Any, ...] | None = None
        produce = runner.produce
        for key, value in values:
            if each:
                self.note(index, task.id, 1)
            try:
                made, got = produce(key, value, attempt)
            except Exception:  # the item fails (or breaks the contract) on a row of its own
                return blocks.SPLIT
            if len(made) != 1 or made[0].key != key:
                return blocks.UNFIT
            out = made[0]
            if status is None:
                status, routes = got, (out.targets, out.gathers)
            elif got is not status or (out.targets, out.gathers) != routes:
                return blocks.UNFIT
            outputs.append(out)
        assert status is not None
        return status, outputs

    def _hand_back(self, task: Claim, why: str) -> Record:
        """The record that asks the driver to split a block (``why``: see blocks)."""
        now = time.time()
        return Record(task.stage, task.key, task.id, Status.PENDING, task.attempt, now, now,
                      [], why)


def _route_of(routes: Iterable[Route], value: Any
              ) -> tuple[tuple[str, ...], tuple[Gather, ...]]:
    """Where an output ``value`` goes: the stages it is routed to, and the reduces and
    groups that gather it."""
    targets: list[str] = []
    gathers: list[Gather] = []
    for route in routes:
        try:
            accepted = route.when is None or bool(route.when(value))
        except Exception as exc:
            raise RoutingError(f"the when= predicate of stage {route.stage!r} raised "
                               f"{_describe(exc)}") from exc
        if not accepted:
            continue
        if route.by is not None:
            try:
                gkey, part = group_of(route.by, route.partitions, value)
            except Exception as exc:
                raise RoutingError(f"the key function (by=) of group {route.stage!r} "
                                   f"raised {_describe(exc)}") from exc
            gathers.append((route.stage, gkey, part))
        elif route.reduce:
            gathers.append((route.stage, None, None))
        else:
            targets.append(route.stage)
    return tuple(targets), tuple(gathers)


def _keyed(default_key: str, value: Any) -> tuple[str, Any]:
    if isinstance(value, Item):
        return check_key(value.key), value.value
    return default_key, value


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
