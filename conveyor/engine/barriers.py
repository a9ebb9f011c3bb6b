"""Barriers: reduces and groups run once everything above them is finished, and a
stage that reads side inputs runs once those are.

::

    upstream outputs ──▶ ledger gathers (stage, value[, group key, partition])
                              │  nothing above pending or running: open()
                              ▼
      reduce ── gather/STAGE.jsonl ──────────────────────────▶ one row, one call
      group  ── gather/STAGE/part-N.tsv, sorted by key ──────▶ one row per partition,
                                                               one call per key
      side=  ── side/STAGE.db (key -> value, indexed) ──────▶ ctx.side(STAGE), looked
                                                               up by the readers' workers

Values bound for a reduce or a group wait in the ledger (one gather row each,
with a group's key and partition as the upstream worker computed them), not
in memory: the driver streams them into the files above when the barrier
opens. A reduce (re)runs when the digest of its input changed; a group keeps
a digest per partition, so a rerun runs again only the partitions whose
values changed (a partition with no values left is removed with what it
made).

A stage with side inputs, and every stage below it, takes no work until the
side stages are finished (and, for barriers, have run). Its rows wait in the
ledger meanwhile, and it does not throttle its upstream, so a side that needs
all of that upstream (a group over the same values) cannot deadlock it. When
its sides are ready their outputs are written to lookup files and digested;
if the digest differs from the one the stage last ran with, the stage is
recomputed from its upstreams' outputs, with everything below it.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterable

import orjson

from .. import codec, rundir
from ..ledger.base import FINISHED, Ledger, Status
from ..observe.events import EventLog
from ..pipeline import Pipeline
from ..result import SPILLED
from ..store import Store
from .prepare import reroute
from .state import StageState

SIDE_DIGEST = "side_digest:"  # ledger meta: the side inputs' digest a stage last ran with


def partition_key(part: int) -> str:
    """The key of a group stage's row for partition ``part``."""
    return f"partition-{part}"


class Barriers:
    """When barrier stages and side readers may run; see the module docstring."""

    def __init__(self, pipeline: Pipeline, stages: dict[str, StageState], run_dir: Path,
                 store: Store) -> None:
        self.pipeline = pipeline
        self.stages = stages
        self.run_dir = run_dir
        self.store = store
        self.settled: set[str] = set()  # barriers checked since their input last changed
        self.opened: set[str] = set()  # side readers whose sides were checked this run
        readers = [s.name for s in pipeline.stages.values() if s.side]
        # stage -> the side readers at or above it, whose gates it waits for
        self.gates = {name: {r for r in readers if r == name or r in pipeline.ancestors(name)}
                      for name in stages}
        self._ledger: Ledger
        self._events: EventLog
        #: Told ``(stage, bytes)`` when a group's partition files are written.
        self.on_spill: Callable[[str, int], None] = lambda stage, size: None

    def open(self, ledger: Ledger, events: EventLog) -> None:
        self._ledger, self._events = ledger, events

    # -- what may run ------------------------------------------------------------------------

    def changed(self, state: StageState) -> None:
        """``state``'s stage recorded something: the barriers below it must look again."""
        if state.barriers_below:
            self.settled.difference_update(state.barriers_below)

    def held(self, state: StageState) -> bool:
        """Whether ``state``'s stage may not take work now (a barrier not due, a gate shut)."""
        if state.stage.barrier and not self._due(state):
            return True
        return bool(self.gates[state.stage.name] - self.opened)

    def waiting(self, name: str) -> bool:
        """Whether a stage's queue is one that fills while it waits: it must not throttle
        the stages above it (a barrier, or a stage behind a shut gate)."""
        return self.stages[name].stage.barrier or bool(self.gates[name] - self.opened)

    def finished(self) -> bool:
        """Whether every barrier has run over its final input, and every side reader
        has checked its sides (which may give it work again)."""
        return all(name in self.settled for name, s in self.stages.items() if s.stage.barrier
                   ) and all(name in self.opened for name, s in self.stages.items()
                             if s.stage.side)

    def _quiet(self, names: Iterable[str]) -> bool:
        return not any(self.stages[n].pending or self.stages[n].running for n in names)

    def _due(self, state: StageState) -> bool:
        return state.stage.name in self.settled and self._quiet(state.ancestors)

    def _done(self, name: str) -> bool:
        """Whether stage ``name`` is finished: nothing of it or above it left to run."""
        state = self.stages[name]
        return (self._quiet([name, *state.ancestors])
                and (not state.stage.barrier or name in self.settled))

    # -- opening -----------------------------------------------------------------------------

    def control(self, recount: Callable[[], None]) -> None:
        """Open the barriers whose input is final and the gates whose sides are done."""
        for name, state in self.stages.items():
            if (state.stage.barrier and name not in self.settled and not state.running
                    and self._quiet(state.ancestors) and not self.gates[name] - self.opened):
                if state.stage.reduce:
                    self._open_reduce(state)
                else:
                    self._open_group(state)
                self.settled.add(name)
        for name, state in self.stages.items():
            if state.stage.side and name not in self.opened and all(
                    self._done(s) for s in state.stage.side):
                self._open_gate(state, recount)
                self.opened.add(name)

    def _open_reduce(self, state: StageState) -> None:
        name = state.stage.name
        digest = gather_digest(self._ledger.gathered(name))
        row = self._ledger.barrier_rows(name).get(name)
        if row is None or row[1] != digest:
            self._ledger.open_barrier(name, name, digest)
            state.pending = 1

    def _open_group(self, state: StageState) -> None:
        """Write each partition's values, sorted by key, to its file; (re)open the
        partitions whose values changed, close those that have none left."""
        name = state.stage.name
        rows = self._ledger.barrier_rows(name)
        folder = self.run_dir / rundir.group_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        seen, opened, spilled = set(), 0, 0
        for part, values in itertools.groupby(self._ledger.grouped(name), lambda g: g.part):
            key = partition_key(part)
            seen.add(key)
            path = self.run_dir / rundir.partition_ref(name, part)
            h = hashlib.blake2b(digest_size=16)
            with open(path.with_suffix(".tmp"), "wb") as fh:
                for g in values:
                    gkey = orjson.dumps(g.gkey)
                    h.update(orjson.dumps([g.gkey, g.key,
                                           g.digest or codec.digest(g.data or b"")]))
                    fh.write(gkey + b"\t" + (b"@" + g.ref.encode() if g.ref else
                                             g.data or b"null") + b"\n")
            digest = h.hexdigest()
            status, recorded = rows.get(key, (None, None))
            if recorded == digest and status in (*FINISHED, Status.FAILED):
                os.remove(path.with_suffix(".tmp"))  # done (or failed) on these very values
                continue
            os.replace(path.with_suffix(".tmp"), path)
            spilled += path.stat().st_size
            if recorded != digest or status is None:
                self._ledger.open_barrier(name, key, digest)
            opened += 1
        for key in set(rows) - seen:  # its values are gone: so is what it made
            self._ledger.close_barrier(name, key)
        state.pending = sum(1 for key, (status, _) in self._ledger.barrier_rows(name).items()
                            if status is Status.PENDING)
        self._ledger.set_meta(SPILLED + name, str(spilled))
        self._events.emit("group_open", stage=name, partitions=len(seen), run=opened,
                          spilled=spilled)
        self.on_spill(name, spilled)

    def _open_gate(self, state: StageState, recount: Callable[[], None]) -> None:
        """Write the side stages' lookup files; recompute the stage if what they hold
        differs from what it last ran with."""
        name = state.stage.name
        h = hashlib.blake2b(digest_size=16)
        for side in state.stage.side:
            h.update(write_side_file(self._ledger, self.run_dir, side).encode())
        digest = h.hexdigest()
        recorded = self._ledger.get_meta(SIDE_DIGEST + name)
        if recorded is not None and recorded != digest:
            self._ledger.drop_stage(name)
            reroute(self.pipeline, self._ledger, self.store, name, self._events)
            self._events.emit("stage_reset", stage=name, side_inputs_changed=True)
            self.settled.difference_update(state.barriers_below)
            recount()
        self._ledger.set_meta(SIDE_DIGEST + name, digest)

    def claims_ref(self, state: StageState, key: str) -> str | None:
        """What a barrier row's worker reads: the reduce's or the partition's file."""
        name = state.stage.name
        if state.stage.reduce:
            return write_gather_file(self._ledger, self.run_dir, name)
        return rundir.partition_ref(name, int(key.rsplit("-", 1)[1]))


def write_gather_file(ledger: Ledger, run_dir: Path, name: str) -> str:
    """Write reduce ``name``'s input, one value (or ``@ref``) per line; return its reference."""
    ref = rundir.gather_ref(name)
    path = run_dir / ref
    path.parent.mkdir(exist_ok=True)
    with open(path, "wb") as fh:
        for row in ledger.gathered(name):
            fh.write(b"@" + row.ref.encode() if row.ref else row.data or b"null")
            fh.write(b"\n")
    return ref


def gather_digest(rows: Iterable[Any]) -> str:
    """A digest of a reduce's input rows (keys and value digests), to tell when it changed."""
    h = hashlib.blake2b(digest_size=16)
    for row in rows:
        h.update(orjson.dumps([row.key, row.digest or codec.digest(row.data or b"")]))
    return h.hexdigest()


def write_side_file(ledger: Ledger, run_dir: Path, name: str) -> str:
    """Write stage ``name``'s outputs to its lookup file (key -> value); return their digest.

    A small SQLite file beside the ledger, so that a side reader's workers look
    values up by key on demand, wherever they run, without the ledger's locks.
    """
    path = run_dir / rundir.side_ref(name)
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    h = hashlib.blake2b(digest_size=16)
    db = sqlite3.connect(tmp, isolation_level=None)
    try:
        db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; BEGIN; "
                         "CREATE TABLE side(key TEXT PRIMARY KEY, data BLOB, ref TEXT) "
                         "WITHOUT ROWID;")

        def rows() -> Iterable[tuple[str, bytes | None, str | None]]:
            for key, data, ref in ledger.outputs(name):
                h.update(orjson.dumps([key, ref or codec.digest(data or b"")]))
                yield key, data, ref

        db.executemany("INSERT OR REPLACE INTO side VALUES(?, ?, ?)", rows())
        db.execute("COMMIT")
    finally:
        db.close()
    os.replace(tmp, path)
    return h.hexdigest()
