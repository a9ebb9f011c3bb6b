"""The ledger: the durable record of a run, one row per (stage, item key).

Every backend keeps the same model and honours the same contract:

* **Rows.** A row is one item at one stage. Its status moves only along the
  edges :func:`transition` allows; any other move raises
  :class:`IllegalTransition`. A row consumes one *value* (a run input, or an
  output of an upstream row) and, once finished, has produced zero or more
  output values (more than one for a fan-out stage). An output is routed to
  the stages its ``targets`` name: each target gets a new row, or, for a
  reduce stage, a *gather* entry.
* **One write path.** :meth:`Ledger.record` applies what became of a list of
  rows. A record may also describe a row that does not exist yet: the child
  of another record in the same call, computed in the same worker (fused
  stages); it is created directly in its final state.
* **Grouped, atomic, durable writes.** Everything written between two
  :meth:`Ledger.commit` calls becomes visible to other readers and durable at
  once, at ``commit()``; a crash before it leaves the ledger exactly as the
  previous ``commit()`` left it. A row therefore never says ``done`` without
  its outputs and the rows they were routed to, and a value file is stored
  before the commit that references it.
* **One writer.** Only the driver writes. Readers (``conveyor status`` from
  another terminal, :func:`conveyor.open_run`) see the last commit.

Keys in a stage are unique. When a stage has several upstreams and a key
arrives from a second one (a diamond: ``a -> b -> c`` and ``a -> c``), the
second row is keyed ``key@upstream``; a key produced twice by the same
upstream stage is a :class:`KeyCollision`, and the record that produced it is
refused whole.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum
from typing import Any, Iterable, Iterator, NamedTuple

from ..errors import IllegalTransition, LedgerError
from ..store import Stored


class Status(str, Enum):
    """Where an item stands at one stage."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    ROUTED_OUT = "routed-out"

    def __str__(self) -> str:
        return self.value


STATUSES = tuple(s.value for s in Status)
FINISHED = (Status.DONE, Status.ROUTED_OUT)

_ALLOWED: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.RUNNING}),
    # Finished one way or another, or handed back (worker lost, run stopped, retry).
    Status.RUNNING: frozenset({Status.DONE, Status.FAILED, Status.ROUTED_OUT, Status.PENDING}),
    # Recomputed: a failed item retried, a finished one invalidated by a rerun;
    # or a rerun changed where a finished item's outputs go.
    Status.DONE: frozenset({Status.PENDING, Status.ROUTED_OUT}),
    Status.FAILED: frozenset({Status.PENDING}),
    Status.ROUTED_OUT: frozenset({Status.PENDING, Status.DONE}),
}


def transition(old: Status | str, new: Status | str) -> Status:
    """``new`` as a :class:`Status` if ``old -> new`` is legal, else raise."""
    old, new = Status(old), Status(new)
    if new not in _ALLOWED[old]:
        raise IllegalTransition(f"an item cannot go from {old} to {new}")
    return new


class KeyCollision(LedgerError):
    """An output key that a stage already holds from the same upstream stage."""


Gather = tuple[str, "str | None", "int | None"]  # (stage, group key, partition)


class Claim(NamedTuple):
    """A row handed out for work: its input as the ledger recorded it."""

    id: int
    stage: str
    key: str
    attempt: int
    data: bytes | None
    ref: str | None


class Output(NamedTuple):
    """One value a finished row produced, and where it was routed.

    ``targets`` are the stages that get a new row for it; ``gathers`` the
    reduce and group stages that will read it, each as ``(stage, group key,
    partition)`` (both None for a reduce).
    """

    key: str
    value: Stored
    targets: tuple[str, ...] = ()
    gathers: tuple[Gather, ...] = ()


class Record(NamedTuple):
    """What became of one row.

    ``item_id`` is the row's id, or ``None`` for a row this same
    :meth:`Ledger.record` call creates: the output of an earlier record in the
    call, routed to ``stage`` under ``key``, that was already computed. The
    ``status`` is final: ``done`` or ``routed-out`` (with ``outputs``),
    ``failed``, or ``pending`` with ``retry_at`` (to try again from then).
    Workers report what they computed as records too (a failure as
    ``failed``, ``fatal`` when the stage broke its contract, not
    ``retryable`` when trying again cannot help); the driver decides on
    retries before the ledger sees them.
    """

    stage: str
    key: str
    item_id: int | None
    status: Status
    attempt: int
    started: float
    ended: float
    outputs: list[Output] = []
    error: str | None = None
    traceback: str | None = None
    retry_at: float | None = None
    worker: str | None = None
    fatal: bool = False
    retryable: bool = True


def call_sizes(records: list[Record]) -> dict[tuple[str, float, float], int]:
    """How many records each stage call produced, by (stage, started, ended).

    The records of one call (a batch) share its stage, start and end.
    """
    sizes: dict[tuple[str, float, float], int] = {}
    for r in records:
        call = (r.stage, r.started, r.ended)
        sizes[call] = sizes.get(call, 0) + 1
    return sizes


class Refused(NamedTuple):
    """A record the ledger did not apply, and why (its key collided)."""

    record: Record
    reason: str


def orphan(record: Record) -> Refused:
    """A record for a row its parent would have created, in a call that refused the parent.

    Both ledgers apply this rule: such a row is never created, and says why.
    """
    return Refused(record, f"its parent was refused, so {record.stage}/{record.key} "
                           f"was never created")


class Gathered(NamedTuple):
    """One value gathered for a reduce stage."""

    key: str
    digest: str | None
    data: bytes | None
    ref: str | None


class Grouped(NamedTuple):
    """One value gathered for a group stage, with its group key and partition."""

    part: int
    gkey: str
    key: str
    digest: str | None
    data: bytes | None
    ref: str | None


class InputReport(NamedTuple):
    """What :meth:`Ledger.add_inputs` found: counts and keys no longer given."""

    added: int
    changed: int
    unchanged: int
    missing: list[str]


class Ledger(ABC):
    """The record of one run. See the module docstring for the contract."""

    # -- setting a run up --------------------------------------------------

    @abstractmethod
    def get_meta(self, name: str) -> str | None:
        """A run-level fact recorded with :meth:`set_meta`, or ``None``."""

    @abstractmethod
    def set_meta(self, name: str, value: str) -> None:
        """Record a run-level fact (the pipeline's name, the run's options)."""

    @abstractmethod
    def stage_fingerprints(self) -> dict[str, str]:
        """The fingerprint each stage had when the ledger last ran it."""

    @abstractmethod
    def set_stage_fingerprint(self, stage: str, fingerprint: str) -> None:
        """Record the fingerprint ``stage`` runs with from now on."""

    @abstractmethod
    def recover(self) -> int:
        """Put every ``running`` row back to ``pending`` (its driver is gone).

        Returns how many rows moved. Attempts are kept, so an item that kills
        its driver every time still runs out of retries.
        """

    @abstractmethod
    def add_inputs(self, stage: str, inputs: Iterable[tuple[str, Stored]]) -> InputReport:
        """Make one pending row of ``stage`` per input, reusing what is unchanged.

        Each input's value must carry its digest. An input whose key and value
        are already recorded keeps its row and everything derived from it. One
        whose value changed is reset to ``pending`` and what was derived from
        it is removed. Raises ``InputError`` naming the key when two inputs
        share a key; nothing of this call is then kept once the caller rolls
        back by not committing.
        """

    @abstractmethod
    def drop_inputs(self, stage: str, keys: list[str]) -> int:
        """Remove the input rows of ``stage`` keyed ``keys``, their values and everything
        derived from them (an input that is gone, not merely left out). Returns the rows
        removed."""

    @abstractmethod
    def reset_stage(self, stage: str) -> int:
        """Every row of ``stage`` back to ``pending``, attempts cleared.

        Outputs of those rows and everything derived from them are removed, so
        the stage and all below it recompute. Returns the rows reset.
        """

    @abstractmethod
    def drop_stage(self, stage: str) -> int:
        """Remove every row of ``stage`` (and its gathers), their outputs and all derived rows.

        Used when a stage below the first changed or was removed: its rows are
        then made again from its upstreams' outputs with :meth:`route`.
        Returns the rows removed.
        """

    @abstractmethod
    def finished_outputs(self, stage: str
                         ) -> Iterator[tuple[int, str, bytes | None, str | None]]:
        """``(output_id, key, data, ref)`` of every output of ``stage``'s finished rows."""

    @abstractmethod
    def route(self, target: str, key: str, output_id: int, source: str) -> None:
        """Give ``target`` a pending row for an existing output of stage ``source``.

        Keys are qualified or refused as for :meth:`record`.
        """

    @abstractmethod
    def gather(self, stage: str, output_id: int, gkey: str | None = None,
               part: int | None = None) -> None:
        """Record that reduce ``stage`` (or group ``stage``, under ``gkey`` in
        partition ``part``) reads an existing output."""

    @abstractmethod
    def refresh_routed(self, stage: str) -> None:
        """Set ``stage``'s finished rows to ``routed-out`` if no output of theirs goes anywhere,
        else to ``done`` (after its routes changed)."""

    @abstractmethod
    def retry_failed(self, stage: str | None = None) -> int:
        """Every ``failed`` row (of ``stage``, or of all) back to ``pending``, attempts cleared."""

    # -- doing the work ------------------------------------------------------

    @abstractmethod
    def claim(self, stage: str, limit: int, worker: str, now: float,
              max_bytes: int | None = None, blocks: bool | None = None) -> list[Claim]:
        """Up to ``limit`` claimable pending rows of ``stage``, oldest first, now ``running``.

        A row is claimable once its retry back-off (``not_before``) has passed.
        Its attempt count is incremented. With ``max_bytes``, rows stop once
        their inline inputs would pass that many bytes (one row is always taken).
        ``blocks`` True takes block rows only, False item rows only.
        """

    @abstractmethod
    def record(self, records: list[Record], worker: str | None = None) -> list[Refused]:
        """Apply what became of rows, each record atomically; return those refused.

        ``worker`` names the worker that computed records that name none.

        A record of an existing row needs it ``running``; one with
        ``item_id=None`` needs an earlier record of the same call to have
        routed an output to ``(stage, key)``. A record is refused, and nothing
        of it applied, when one of its output keys collides
        (:class:`KeyCollision`) or, for a new row, when its parent was refused.
        Illegal moves of existing rows raise :class:`IllegalTransition`.
        """

    def complete(self, item_id: int, outputs: list[Output], status: Status, now: float
                 ) -> Status:
        """Record one running row as finished with ``outputs`` (``done`` or ``routed-out``).

        Raises :class:`KeyCollision`, changing nothing, if an output key collides.
        """
        refused = self.record([Record("", "", item_id, Status(status), 0, now, now, outputs)])
        if refused:
            raise KeyCollision(refused[0].reason)
        return Status(status)

    def fail(self, item_id: int, error: str, traceback: str | None, now: float,
             retry_at: float | None) -> Status:
        """Record one running row as failed: ``pending`` again from ``retry_at``, or ``failed``."""
        status = Status.PENDING if retry_at is not None else Status.FAILED
        self.record([Record("", "", item_id, status, 0, now, now, [], error, traceback,
                            retry_at)])
        return status

    def split(self, item_ids: Iterable[int]) -> int:
        """Block rows (pending or running, see :mod:`conveyor.ledger.blocks`) into one
        pending row per item, reading the item's own value; returns the rows made.

        A running block's attempt is not counted: its items start over on their
        own. Only a ledger that takes inputs in as blocks has any to split.
        """
        raise LedgerError(f"{type(self).__name__} holds no blocks to split")

    def recompute(self, item_ids: Iterable[int]) -> None:
        """Finished block rows back to ``pending``, what was derived from them removed:
        a stage added below them needs each item's own value, which a block's packed
        outputs do not give (see :func:`conveyor.engine.prepare.reroute`)."""
        raise LedgerError(f"{type(self).__name__} holds no blocks to recompute")

    @abstractmethod
    def release(self, item_ids: Iterable[int]) -> None:
        """Running rows that never started go back to ``pending``; the attempt is not counted."""

    @abstractmethod
    def barrier_rows(self, stage: str) -> dict[str, tuple[Status, str | None]]:
        """Status and input digest of each row of reduce or group ``stage``, by key
        (a reduce's one row; a group's row per partition)."""

    @abstractmethod
    def open_barrier(self, stage: str, key: str, input_digest: str) -> None:
        """Create row ``key`` of a reduce or group ``stage`` as pending for
        ``input_digest``, or reset it.

        A reset removes the previous outputs and what was derived from them.
        """

    @abstractmethod
    def close_barrier(self, stage: str, key: str) -> None:
        """Remove row ``key`` of a group ``stage`` (its partition has no values any
        more), with its outputs and what was derived from them."""

    @abstractmethod
    def gathered(self, stage: str) -> Iterator[Gathered]:
        """The values gathered for reduce ``stage``, by key (a stable order)."""

    @abstractmethod
    def grouped(self, stage: str) -> Iterator[Grouped]:
        """The values gathered for group ``stage``, by partition, group key and
        item key (a stable order)."""

    @abstractmethod
    def commit(self) -> None:
        """Make every write since the last commit durable and visible, atomically."""

    # -- reading ---------------------------------------------------------------

    @abstractmethod
    def counts(self) -> dict[str, dict[str, int]]:
        """Rows per status per stage (only stages that have rows)."""

    @abstractmethod
    def pending_counts(self) -> dict[str, int]:
        """Pending rows per stage (cheap: the queue, not the whole table)."""

    @abstractmethod
    def next_retry(self, stage: str) -> float | None:
        """The earliest ``not_before`` of a pending row of ``stage`` still backing off."""

    @abstractmethod
    def failures(self, stage: str | None = None) -> list[dict[str, Any]]:
        """Failed rows: ``stage``, ``key``, ``error``, ``traceback``, ``attempts``."""

    @abstractmethod
    def outputs(self, stage: str) -> Iterator[tuple[str, bytes | None, str | None]]:
        """``(key, data, ref)`` of every output of ``stage``'s finished rows, by row key (a
        block's items in the order they were given)."""

    @abstractmethod
    def rows(self, stage: str | None = None) -> Iterator[dict[str, Any]]:
        """Every row (of ``stage``) as a dict, for status views and tests."""

    @abstractmethod
    def close(self) -> None:
        """Release the backend; uncommitted writes are discarded."""

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
