"""The SQLite ledger's queries that only read: what views, reruns and barriers ask.

A mixin of :class:`~conveyor.ledger.sqlite.SqliteLedger` (kept apart so that
the module that writes stays readable); every method here reads through the
ledger's connection and never writes, so it works on a ledger opened
read-only too.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Iterator

from . import blocks, sql
from .base import Gathered, Grouped, Status


class SqliteReads:
    """Reading queries over ``self._db``; see the module docstring."""

    _db: sqlite3.Connection

    def finished_outputs(self, stage: str
                         ) -> Iterator[tuple[int, str, bytes | None, str | None]]:
        for row in self._stage_outputs(stage):
            yield row[0], row[1], row[2], row[3]

    def _stage_outputs(self, stage: str) -> Iterator[tuple[int, str, bytes | None, str | None]]:
        """(value id, key, data, ref) of ``stage``'s finished rows' outputs, by row key.

        In pages of rows, so the caller may write between them.
        """
        last = ""
        while True:
            rows = self._db.execute(
                "SELECT id, key, n_out, coalesce(out_key, key), out_data, out_ref FROM items "
                "WHERE stage=? AND key > ? AND status IN ('done', 'routed-out') "
                "ORDER BY key LIMIT 500", (stage, last)).fetchall()
            if not rows:
                return
            many = [r[0] for r in rows if r[2] != 1]
            table: dict[int, list[tuple[int, str, bytes | None, str | None]]] = {}
            if many:
                for oid, item_id, key, data, ref in self._db.execute(
                        f"SELECT id, item_id, key, data, ref FROM outputs "
                        f"WHERE item_id IN ({sql.marks(len(many))}) ORDER BY item_id, seq", many):
                    table.setdefault(item_id, []).append((oid, key, data, ref))
            for row_id, _, n_out, out_key, data, ref in rows:
                if n_out == 1:
                    yield -row_id, out_key, data, ref
                else:
                    yield from table.get(row_id, [])
            last = rows[-1][1]

    def barrier_rows(self, stage: str) -> dict[str, tuple[Status, str | None]]:
        return {key: (Status(status), digest) for key, status, digest in self._db.execute(
            "SELECT key, status, input_digest FROM items WHERE stage=?", (stage,))}

    def grouped(self, stage: str) -> Iterator[Grouped]:
        col = "g.value_id"
        cur = self._db.execute(
            f"SELECT g.part, g.gkey, coalesce(p.out_key, p.key, o.key), "
            f"coalesce(p.out_digest, o.digest), {sql.VALUE_DATA.format(col=col)}, "
            f"{sql.VALUE_REF.format(col=col)} FROM gathers g {sql.VALUE_JOIN.format(col=col)} "
            f"WHERE g.stage=? AND g.part IS NOT NULL ORDER BY g.part, g.gkey, 3, g.value_id",
            (stage,))
        for row in cur:
            yield Grouped(*row)

    def gathered(self, stage: str) -> Iterator[Gathered]:
        col = "g.value_id"
        cur = self._db.execute(
            f"SELECT coalesce(p.out_key, p.key, o.key), coalesce(p.out_digest, o.digest), "
            f"{sql.VALUE_DATA.format(col=col)}, {sql.VALUE_REF.format(col=col)} FROM gathers g "
            f"{sql.VALUE_JOIN.format(col=col)} WHERE g.stage=? ORDER BY 1, g.value_id", (stage,))
        for row in cur:
            yield Gathered(*row)

    def counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for stage, status, n in self._db.execute(
                f"SELECT stage, status, sum({sql.ROW_ITEMS}) FROM items GROUP BY stage, status"):
            counts.setdefault(stage, {})[status] = n
        return counts

    def pending_counts(self) -> dict[str, int]:
        return dict(self._db.execute(
            f"SELECT stage, sum({sql.ROW_ITEMS}) FROM items WHERE status='pending' "
            f"GROUP BY stage"))

    def next_retry(self, stage: str) -> float | None:
        return self._db.execute(
            "SELECT min(not_before) FROM items WHERE stage=? AND status='pending'",
            (stage,)).fetchone()[0]

    def failures(self, stage: str | None = None) -> list[dict[str, Any]]:
        sql = ("SELECT stage, key, error, traceback, attempts FROM items "
               "WHERE status='failed'")
        params: tuple[str, ...] = ()
        if stage is not None:
            sql += " AND stage=?"
            params = (stage,)
        cols = ("stage", "key", "error", "traceback", "attempts")
        return [dict(zip(cols, row)) for row in self._db.execute(sql + " ORDER BY stage, key",
                                                                  params)]

    def outputs(self, stage: str) -> Iterator[tuple[str, bytes | None, str | None]]:
        for _, key, data, ref in self._stage_outputs(stage):
            if blocks.is_block(key):  # a block's outputs, packed in one value
                assert data is not None
                for item in blocks.unpack(data):
                    yield item.key, item.data, item.ref
            else:
                yield key, data, ref

    def rows(self, stage: str | None = None) -> Iterator[dict[str, Any]]:
        cols = ("id", "stage", "key", "status", "attempts", "input_digest", "error", "worker",
                "started", "ended")
        col = "i.input_id"
        query = (f"SELECT {', '.join('i.' + c for c in cols)}, "
                 f"{sql.VALUE_DATA.format(col=col)} FROM items i {sql.VALUE_JOIN.format(col=col)}")
        params: tuple[str, ...] = ()
        if stage is not None:
            query += " WHERE i.stage=?"
            params = (stage,)
        for *row, data in self._db.execute(query + " ORDER BY i.id", params):
            found = dict(zip(cols, row))
            if not blocks.is_block(found["key"]):
                yield found
                continue
            for item in blocks.unpack(data):  # a block row: one row per item, as it stands
                yield {**found, "key": item.key, "input_digest": item.digest}
