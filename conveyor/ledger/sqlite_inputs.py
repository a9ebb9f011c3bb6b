"""How the SQLite ledger takes a run's inputs in: a first run's, and a rerun's compared
with the rows held.

A mixin of :class:`~conveyor.ledger.sqlite.SqliteLedger` (kept apart so that
the module that records results stays readable). It writes through the
ledger's ``_write()`` connection and uses its ``_drop_derived`` to remove what
was derived from a changed input.
"""

from __future__ import annotations

import itertools
import sqlite3
from typing import Any, Iterable

from .. import codec
from ..store import Stored
from . import sql
from .base import InputReport

INPUT_CHUNK = 5000  # inputs taken in per statement group


class SqliteInputs:
    """Taking inputs in over ``self._db``; see the module docstring."""

    _db: sqlite3.Connection

    def add_inputs(self, stage: str, inputs: Iterable[tuple[str, Stored]]) -> InputReport:
        db = self._write()
        if db.execute("SELECT 1 FROM items WHERE stage=? LIMIT 1", (stage,)).fetchone() is None:
            return self._add_first_inputs(stage, inputs)
        db.execute("DELETE FROM temp.seen")
        counts = [0, 0, 0]  # added, changed, unchanged
        given = iter(inputs)
        after: int | None = 0
        for number in itertools.count():
            chunk = list(itertools.islice(given, INPUT_CHUNK))
            if not chunk:
                break
            after = self._compare_inputs(stage, chunk, number, after, counts)
        added, changed, unchanged = counts
        total = added + changed + unchanged
        if total == 0:
            return InputReport(0, 0, 0, [])
        (rows,) = db.execute("SELECT count(*) FROM items WHERE stage=?", (stage,)).fetchone()
        missing = [] if rows == total else [k for (k,) in db.execute(
            "SELECT key FROM items i WHERE stage=? AND NOT EXISTS "
            "(SELECT 1 FROM temp.seen s WHERE s.id = i.id) ORDER BY key", (stage,))]
        db.execute("DELETE FROM temp.seen")
        return InputReport(added, changed, unchanged, missing)

    def _compare_inputs(self, stage: str, chunk: list[tuple[str, Stored]], number: int,
                        after: int | None, counts: list[int]) -> int | None:
        """One chunk of a rerun's inputs against the rows ``stage`` holds; adds to
        ``counts`` (added, changed, unchanged) and returns where the next chunk's
        window starts (see :meth:`_find_inputs`).

        An unchanged input costs no write but its row id in ``temp.seen``
        (which finds repeated keys and, at the end, the rows no longer given).
        ``number`` orders the chunks, so that a repeated key is named where it
        is first repeated.
        """
        db = self._db
        found, after = self._find_inputs(stage, chunk, after)
        fresh: list[tuple[str, Stored]] = []
        seen: list[int] = []
        changed: list[tuple[int, int, str, Stored]] = []
        for (key, value), row in zip(chunk, found):
            if row is None:
                fresh.append((key, value))
                continue
            seen.append(row[0])
            if row[2] != value.digest:
                changed.append((row[0], row[1], key, value))
        try:
            db.execute(sql.MARK_SEEN, (number, codec.encode(seen)))
        except sqlite3.IntegrityError:
            held = {i for (i,) in db.execute("SELECT id FROM temp.seen WHERE chunk < ?",
                                             (number,))}
            ids = {key: row[0] for (key, _), row in zip(chunk, found) if row is not None}
            error = sql.duplicate_key((key for key, _ in chunk),
                                      lambda key: ids.get(key) in held)
            if error is not None:
                raise error from None
            raise
        if fresh:
            (before,) = db.execute("SELECT coalesce(max(id), 0) FROM items").fetchone()
            (next_id,) = db.execute("SELECT coalesce(max(id), 0) + 1 FROM outputs").fetchone()
            self._insert_inputs(
                [(next_id + n, None, 0, key, v.data, v.ref, v.digest, v.size)
                 for n, (key, v) in enumerate(fresh)],
                [(stage, key, "pending", next_id + n, v.digest)
                 for n, (key, v) in enumerate(fresh)])
            db.execute("INSERT INTO temp.seen SELECT id, ? FROM items WHERE id > ?",
                       (number, before))
        self._drop_derived([row[0] for row in changed])  # one pass for the chunk
        for item_id, old_input, key, v in changed:
            db.execute("DELETE FROM outputs WHERE id=?", (old_input,))
            new_input = db.execute(
                "INSERT INTO outputs(item_id, seq, key, data, ref, digest, size) "
                "VALUES(NULL, 0, ?, ?, ?, ?, ?)", (key, v.data, v.ref, v.digest, v.size)
            ).lastrowid
            db.execute(
                f"UPDATE items SET status='pending', attempts=0, input_id=?, input_digest=?, "
                f"error=NULL, traceback=NULL, not_before=NULL, {sql.CLEAR_OUTPUT} WHERE id=?",
                (new_input, v.digest, item_id))
        counts[0] += len(fresh)
        counts[1] += len(changed)
        counts[2] += len(seen) - len(changed)
        return after

    def _find_inputs(self, stage: str, chunk: list[tuple[str, Stored]], after: int | None
                     ) -> tuple[list[tuple[Any, ...] | None], int | None]:
        """The row ``stage`` holds for each key of ``chunk`` (or None): its id, input
        value id and input digest first; and where the next window starts.

        Inputs given again mostly come in the order they were first given, which
        is the order of their rows: so the stage's next rows after ``after``, read
        in id order (a sequential read), are tried first; where their keys are
        the chunk's, in order, nothing is looked up. Only keys not among them are
        looked up in the (stage, key) index, a random read each, several times
        dearer. A window that comes back short has reached the end of the table:
        the following chunks use the index alone (``after`` None), so the windows
        read the table at most once in all.
        """
        db = self._db
        keys = [key for key, _ in chunk]
        found: list[tuple[Any, ...] | None] = [None] * len(chunk)
        if after is not None:
            rows = db.execute(sql.NEXT_INPUTS, (stage, after, len(chunk))).fetchall()
            after = rows[-1][0] if len(rows) == len(chunk) else None
            if [row[3] for row in rows] == keys:
                return rows, after
            window = {row[3]: row for row in rows}
            found = [window.get(key) for key in keys]
        rest = [pos for pos, row in enumerate(found) if row is None]
        if rest:
            for row in db.execute(sql.PROBE_INPUTS, (codec.encode([keys[p] for p in rest]),
                                                     stage)):
                found[rest[row[3]]] = row
        return found, after

    def _add_first_inputs(self, stage: str, inputs: Iterable[tuple[str, Stored]]
                          ) -> InputReport:
        """A stage's first inputs: written straight into their rows, in chunks.

        With nothing to compare against, no key is looked up: that halves the
        cost of starting a large run.
        """
        added = 0
        values: list[tuple[Any, ...]] = []
        rows: list[tuple[Any, ...]] = []
        (next_id,) = self._db.execute("SELECT coalesce(max(id), 0) + 1 FROM outputs").fetchone()
        for key, value in inputs:
            values.append((next_id, None, 0, key, value.data, value.ref, value.digest,
                           value.size))
            rows.append((stage, key, "pending", next_id, value.digest))
            next_id += 1
            if len(rows) >= INPUT_CHUNK:
                added += self._insert_inputs(values, rows)
                values, rows = [], []
        added += self._insert_inputs(values, rows)
        return InputReport(added, 0, 0, [])

    def _insert_inputs(self, values: list[tuple[Any, ...]], rows: list[tuple[Any, ...]]) -> int:
        db = self._db
        db.executemany(sql.INSERT_OUTPUT, values)
        (before,) = db.execute("SELECT coalesce(max(id), 0) FROM items").fetchone()
        try:
            db.executemany("INSERT INTO items(stage, key, status, input_id, input_digest) "
                           "VALUES(?, ?, ?, ?, ?)", rows)
        except sqlite3.IntegrityError:
            stage = rows[0][0]
            error = sql.duplicate_key((row[1] for row in rows), lambda key: db.execute(
                "SELECT 1 FROM items WHERE stage=? AND key=? AND id <= ?",
                (stage, key, before)).fetchone() is not None)
            if error is not None:
                raise error from None
            raise
        return len(rows)

    def drop_inputs(self, stage: str, keys: list[str]) -> int:
        db = self._write()
        rows = [row for chunk in sql.chunks(keys) for row in db.execute(
            f"SELECT id, input_id FROM items WHERE stage=? AND key IN ({sql.marks(len(chunk))})",
            (stage, *chunk))]
        self._drop_derived([row_id for row_id, _ in rows])
        for row_id, input_id in rows:
            db.execute("DELETE FROM items WHERE id=?", (row_id,))
            db.execute("DELETE FROM outputs WHERE id=?", (input_id,))
        return len(rows)
