"""The SQLite ledger: one file in the run directory, WAL mode, grouped commits.

``synchronous=FULL`` makes each :meth:`SqliteLedger.commit` durable against
power loss, not only against a crash of the process; the driver commits a
group of writes every few tens of milliseconds, so durability costs one sync
per group, never one per item.

Tables::

    items    one row per (stage, key): status, attempts, input_id -> outputs.id
    outputs  every value: run inputs (item_id NULL) and rows' outputs
    gathers  (reduce stage, outputs.id): the values a reduce will read
    stages   the fingerprint each stage last ran with
    meta     run-level facts (pipeline name, schema version)
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import IllegalTransition, InputError, LedgerError
from ..store import Stored
from .base import (Claim, Gathered, InputReport, KeyCollision, Ledger, Output, Status,
                   transition)

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stages(name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items(
    id INTEGER PRIMARY KEY,
    stage TEXT NOT NULL,
    key TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    input_id INTEGER,
    input_digest TEXT,
    fingerprint TEXT,
    not_before REAL,
    error TEXT,
    traceback TEXT,
    worker TEXT,
    started REAL,
    ended REAL,
    UNIQUE(stage, key)
);
CREATE INDEX IF NOT EXISTS items_queue ON items(stage, status);
CREATE INDEX IF NOT EXISTS items_input ON items(input_id);
CREATE TABLE IF NOT EXISTS outputs(
    id INTEGER PRIMARY KEY,
    item_id INTEGER,
    seq INTEGER NOT NULL,
    key TEXT NOT NULL,
    data BLOB,
    ref TEXT,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outputs_item ON outputs(item_id);
CREATE TABLE IF NOT EXISTS gathers(
    stage TEXT NOT NULL,
    output_id INTEGER NOT NULL,
    PRIMARY KEY(stage, output_id)
) WITHOUT ROWID;
"""

# Outputs of the given items and, transitively, every row and output derived from them.
_DERIVED = """
WITH RECURSIVE derived(id) AS (
    SELECT o.id FROM outputs o WHERE o.item_id IN (SELECT id FROM temp.roots)
    UNION
    SELECT o.id FROM derived d
        JOIN items i ON i.input_id = d.id
        JOIN outputs o ON o.item_id = i.id
)
INSERT INTO temp.doomed(id) SELECT id FROM derived
"""


class SqliteLedger(Ledger):
    """A ledger in one SQLite file. ``readonly=True`` opens it for viewing only."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        try:
            if readonly:
                if not self.path.exists():
                    raise LedgerError(f"no ledger at {self.path}")
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                           isolation_level=None, check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, isolation_level=None,
                                           check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=10000")
            if not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_SCHEMA)
                self._db.execute("INSERT OR IGNORE INTO meta VALUES('schema', ?)",
                                 (SCHEMA_VERSION,))
                self._db.executescript(
                    "CREATE TEMP TABLE roots(id INTEGER PRIMARY KEY);"
                    "CREATE TEMP TABLE doomed(id INTEGER PRIMARY KEY);")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"cannot open the ledger {self.path}: {exc}") from None
        self._in_tx = False

    # -- transactions ----------------------------------------------------------

    def _write(self) -> sqlite3.Connection:
        if self.readonly:
            raise LedgerError("this ledger was opened read-only")
        if not self._in_tx:
            self._db.execute("BEGIN IMMEDIATE")
            self._in_tx = True
        return self._db

    def commit(self) -> None:
        if self._in_tx:
            self._db.execute("COMMIT")
            self._in_tx = False

    def close(self) -> None:
        if self._in_tx:
            self._db.execute("ROLLBACK")
            self._in_tx = False
        self._db.close()

    def integrity_check(self) -> str:
        """SQLite's own ``PRAGMA integrity_check`` answer ("ok" when sound)."""
        return self._db.execute("PRAGMA integrity_check").fetchone()[0]

    # -- metadata ---------------------------------------------------------------

    def get_meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def set_meta(self, name: str, value: str) -> None:
        self._write().execute("INSERT OR REPLACE INTO meta VALUES(?, ?)", (name, value))

    def stage_fingerprints(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT name, fingerprint FROM stages"))

    def set_stage_fingerprint(self, stage: str, fingerprint: str) -> None:
        self._write().execute("INSERT OR REPLACE INTO stages VALUES(?, ?)", (stage, fingerprint))

    # -- setting up a run -------------------------------------------------------

    def recover(self) -> int:
        cur = self._write().execute(
            "UPDATE items SET status='pending', worker=NULL WHERE status='running'")
        return cur.rowcount

    def add_inputs(self, stage: str, inputs: Iterable[tuple[str, Stored]]) -> InputReport:
        db = self._write()
        db.execute("CREATE TEMP TABLE IF NOT EXISTS given("
                   "key TEXT PRIMARY KEY, data BLOB, ref TEXT, digest TEXT, size INTEGER)")
        db.execute("DELETE FROM temp.given")
        chunk: list[tuple[str, bytes | None, str | None, str, int]] = []
        for key, value in inputs:
            chunk.append((key, value.data, value.ref, value.digest, value.size))
            if len(chunk) >= 5000:
                self._stage_inputs(chunk)
                chunk = []
        self._stage_inputs(chunk)
        if db.execute("SELECT count(*) FROM temp.given").fetchone()[0] == 0:
            return InputReport(0, 0, 0, [])
        before = db.execute("SELECT coalesce(max(id), 0) FROM outputs").fetchone()[0]
        db.execute(
            "INSERT INTO outputs(item_id, seq, key, data, ref, digest, size) "
            "SELECT NULL, 0, g.key, g.data, g.ref, g.digest, g.size FROM temp.given g "
            "WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.stage=? AND i.key=g.key)",
            (stage,))
        added = db.execute(
            "INSERT INTO items(stage, key, status, input_id, input_digest) "
            "SELECT ?, o.key, 'pending', o.id, o.digest FROM outputs o WHERE o.id > ?",
            (stage, before)).rowcount
        changed = db.execute(
            "SELECT i.id, g.data, g.ref, g.digest, g.size FROM items i "
            "JOIN temp.given g ON g.key = i.key WHERE i.stage=? AND i.input_digest != g.digest",
            (stage,)).fetchall()
        for item_id, data, ref, dig, size in changed:
            self._drop_derived([item_id])
            old_input = db.execute("SELECT input_id, key FROM items WHERE id=?",
                                   (item_id,)).fetchone()
            db.execute("DELETE FROM outputs WHERE id=?", (old_input[0],))
            new_input = db.execute(
                "INSERT INTO outputs(item_id, seq, key, data, ref, digest, size) "
                "VALUES(NULL, 0, ?, ?, ?, ?, ?)", (old_input[1], data, ref, dig, size)).lastrowid
            db.execute(
                "UPDATE items SET status='pending', attempts=0, input_id=?, input_digest=?, "
                "error=NULL, traceback=NULL, not_before=NULL WHERE id=?",
                (new_input, dig, item_id))
        total = db.execute("SELECT count(*) FROM temp.given").fetchone()[0]
        missing = [k for (k,) in db.execute(
            "SELECT key FROM items i WHERE stage=? AND NOT EXISTS "
            "(SELECT 1 FROM temp.given g WHERE g.key = i.key) ORDER BY key", (stage,))]
        db.execute("DELETE FROM temp.given")
        return InputReport(added, len(changed), total - added - len(changed), missing)

    def _stage_inputs(self, chunk: list[tuple[str, bytes | None, str | None, str, int]]) -> None:
        if not chunk:
            return
        before = self._db.execute("SELECT coalesce(max(rowid), 0) FROM temp.given").fetchone()[0]
        try:
            self._db.executemany("INSERT INTO temp.given VALUES(?, ?, ?, ?, ?)", chunk)
        except sqlite3.IntegrityError:
            seen: set[str] = set()
            for key, *_ in chunk:
                row = self._db.execute("SELECT rowid FROM temp.given WHERE key=?",
                                       (key,)).fetchone()
                if key in seen or (row is not None and row[0] <= before):
                    raise InputError(f"duplicate input key {key!r}") from None
                seen.add(key)
            raise

    def reset_stage(self, stage: str) -> int:
        db = self._write()
        ids = [i for (i,) in db.execute("SELECT id FROM items WHERE stage=?", (stage,))]
        self._drop_derived(ids)
        db.execute("UPDATE items SET status='pending', attempts=0, error=NULL, traceback=NULL, "
                   "not_before=NULL, fingerprint=NULL WHERE stage=?", (stage,))
        return len(ids)

    def drop_stage(self, stage: str) -> int:
        db = self._write()
        ids = [i for (i,) in db.execute("SELECT id FROM items WHERE stage=?", (stage,))]
        self._drop_derived(ids)
        db.execute("DELETE FROM gathers WHERE stage=?", (stage,))
        return db.execute("DELETE FROM items WHERE stage=?", (stage,)).rowcount

    def finished_outputs(self, stage: str
                         ) -> Iterator[tuple[int, str, str, bytes | None, str | None]]:
        last = ""
        while True:  # in pages of items by key, so the caller may write between them
            items = self._db.execute(
                "SELECT id, key FROM items WHERE stage=? AND key > ? "
                "AND status IN ('done', 'routed-out') ORDER BY key LIMIT 500",
                (stage, last)).fetchall()
            if not items:
                return
            marks = ",".join("?" * len(items))
            yield from self._db.execute(
                f"SELECT o.id, o.key, o.digest, o.data, o.ref FROM outputs o "
                f"WHERE o.item_id IN ({marks}) ORDER BY o.item_id, o.seq",
                [i for i, _ in items]).fetchall()
            last = items[-1][1]

    def route(self, target: str, key: str, output_id: int, digest: str, source: str) -> None:
        self._write()
        self._route(target, key, output_id, digest, source)

    def gather(self, stage: str, output_id: int) -> None:
        self._write().execute("INSERT OR IGNORE INTO gathers VALUES(?, ?)", (stage, output_id))

    def refresh_routed(self, stage: str) -> None:
        self._write().execute(
            "UPDATE items SET status = CASE WHEN EXISTS ("
            "  SELECT 1 FROM outputs o WHERE o.item_id = items.id AND ("
            "    EXISTS (SELECT 1 FROM items d WHERE d.input_id = o.id) OR "
            "    EXISTS (SELECT 1 FROM gathers g WHERE g.output_id = o.id)))"
            " THEN 'done' ELSE 'routed-out' END "
            "WHERE stage=? AND status IN ('done', 'routed-out') "
            "AND EXISTS (SELECT 1 FROM outputs o WHERE o.item_id = items.id)", (stage,))

    def retry_failed(self, stage: str | None = None) -> int:
        sql = ("UPDATE items SET status='pending', attempts=0, not_before=NULL "
               "WHERE status='failed'")
        if stage is None:
            return self._write().execute(sql).rowcount
        return self._write().execute(sql + " AND stage=?", (stage,)).rowcount

    def _drop_derived(self, item_ids: list[int]) -> None:
        """Remove the outputs of ``item_ids`` and every row and value derived from them."""
        if not item_ids:
            return
        db = self._write()
        db.execute("DELETE FROM temp.roots")
        db.execute("DELETE FROM temp.doomed")
        db.executemany("INSERT INTO temp.roots VALUES(?)", ((i,) for i in item_ids))
        db.execute(_DERIVED)
        db.execute("DELETE FROM items WHERE input_id IN (SELECT id FROM temp.doomed)")
        db.execute("DELETE FROM gathers WHERE output_id IN (SELECT id FROM temp.doomed)")
        db.execute("DELETE FROM outputs WHERE id IN (SELECT id FROM temp.doomed)")

    # -- work ------------------------------------------------------------------------

    def claim(self, stage: str, limit: int, worker: str, now: float) -> list[Claim]:
        db = self._write()
        rows = db.execute(
            "SELECT i.id, i.key, i.attempts + 1, o.data, o.ref FROM items i "
            "LEFT JOIN outputs o ON o.id = i.input_id "
            "WHERE i.stage=? AND i.status='pending' AND (i.not_before IS NULL OR i.not_before <= ?) "
            "ORDER BY i.id LIMIT ?", (stage, now, limit)).fetchall()
        db.executemany(
            "UPDATE items SET status='running', attempts=attempts+1, worker=?, started=?, "
            "ended=NULL, not_before=NULL WHERE id=?",
            ((worker, now, r[0]) for r in rows))
        return [Claim(*r) for r in rows]

    def complete(self, item_id: int, outputs: list[Output], status: Status, fingerprint: str,
                 now: float) -> Status:
        db = self._write()
        stage = self._check(item_id, status)
        output_ids: list[int] = []
        try:
            for seq, out in enumerate(outputs):
                v = out.value
                oid = db.execute(
                    "INSERT INTO outputs(item_id, seq, key, data, ref, digest, size) "
                    "VALUES(?, ?, ?, ?, ?, ?, ?)",
                    (item_id, seq, out.key, v.data, v.ref, v.digest, v.size)).lastrowid
                output_ids.append(oid)
                for target in out.targets:
                    self._route(target, out.key, oid, v.digest, stage)
                db.executemany("INSERT INTO gathers VALUES(?, ?)",
                               ((g, oid) for g in out.gathers))
        except KeyCollision:
            db.executemany("DELETE FROM items WHERE input_id=?", ((o,) for o in output_ids))
            db.executemany("DELETE FROM gathers WHERE output_id=?", ((o,) for o in output_ids))
            db.execute("DELETE FROM outputs WHERE item_id=?", (item_id,))
            raise
        db.execute(
            "UPDATE items SET status=?, fingerprint=?, ended=?, error=NULL, traceback=NULL "
            "WHERE id=?", (status.value, fingerprint, now, item_id))
        return status

    def _route(self, target: str, key: str, output_id: int, digest: str, source: str) -> None:
        db = self._db
        insert = ("INSERT INTO items(stage, key, status, input_id, input_digest) "
                  "VALUES(?, ?, 'pending', ?, ?) ON CONFLICT(stage, key) DO NOTHING")
        if db.execute(insert, (target, key, output_id, digest)).rowcount:
            return
        holder = db.execute(
            "SELECT coalesce(p.stage, '') FROM items i JOIN outputs o ON o.id = i.input_id "
            "LEFT JOIN items p ON p.id = o.item_id WHERE i.stage=? AND i.key=?",
            (target, key)).fetchone()
        if holder and holder[0] != source:
            qualified = f"{key}@{source}"
            if db.execute(insert, (target, qualified, output_id, digest)).rowcount:
                return
        raise KeyCollision(
            f"stage {target!r} already has an item keyed {key!r} from stage {source!r}; "
            f"yield conveyor.Item(key, value) with distinct keys")

    def fail(self, item_id: int, error: str, traceback: str | None, now: float,
             retry_at: float | None) -> Status:
        status = Status.PENDING if retry_at is not None else Status.FAILED
        self._check(item_id, status)
        self._db.execute(
            "UPDATE items SET status=?, error=?, traceback=?, ended=?, not_before=? WHERE id=?",
            (status.value, error, traceback, now, retry_at, item_id))
        return status

    def release(self, item_ids: Iterable[int]) -> None:
        db = self._write()
        for item_id in item_ids:
            self._check(item_id, Status.PENDING)
            db.execute("UPDATE items SET status='pending', attempts=max(attempts-1, 0), "
                       "worker=NULL WHERE id=?", (item_id,))

    def _check(self, item_id: int, new: Status) -> str:
        """The row's stage, after checking that ``status -> new`` is legal."""
        row = self._write().execute("SELECT stage, status FROM items WHERE id=?",
                                    (item_id,)).fetchone()
        if row is None:
            raise IllegalTransition(f"no item with id {item_id}")
        transition(row[1], new)
        return row[0]

    # -- reduce ---------------------------------------------------------------------

    def reduce_row(self, stage: str) -> tuple[Status, str | None] | None:
        row = self._db.execute("SELECT status, input_digest FROM items WHERE stage=?",
                               (stage,)).fetchone()
        return (Status(row[0]), row[1]) if row else None

    def open_reduce(self, stage: str, key: str, input_digest: str) -> None:
        db = self._write()
        row = db.execute("SELECT id, status FROM items WHERE stage=?", (stage,)).fetchone()
        if row is None:
            db.execute("INSERT INTO items(stage, key, status, input_digest) "
                       "VALUES(?, ?, 'pending', ?)", (stage, key, input_digest))
            return
        if row[1] != Status.PENDING:
            transition(row[1], Status.PENDING)
        self._drop_derived([row[0]])
        db.execute("UPDATE items SET status='pending', attempts=0, input_digest=?, error=NULL, "
                   "traceback=NULL, not_before=NULL WHERE id=?", (input_digest, row[0]))

    def gathered(self, stage: str) -> Iterator[Gathered]:
        cur = self._db.execute(
            "SELECT o.key, o.digest, o.data, o.ref FROM gathers g "
            "JOIN outputs o ON o.id = g.output_id WHERE g.stage=? ORDER BY o.key, o.id",
            (stage,))
        for row in cur:
            yield Gathered(*row)

    # -- reading ----------------------------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for stage, status, n in self._db.execute(
                "SELECT stage, status, count(*) FROM items GROUP BY stage, status"):
            counts.setdefault(stage, {})[status] = n
        return counts

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
        yield from self._db.execute(
            "SELECT o.key, o.data, o.ref FROM items i JOIN outputs o ON o.item_id = i.id "
            "WHERE i.stage=? AND i.status IN ('done', 'routed-out') ORDER BY i.key, o.seq",
            (stage,))

    def rows(self, stage: str | None = None) -> Iterator[dict[str, Any]]:
        cols = ("id", "stage", "key", "status", "attempts", "input_digest", "fingerprint",
                "error", "worker", "started", "ended")
        sql = f"SELECT {', '.join(cols)} FROM items"
        params: tuple[str, ...] = ()
        if stage is not None:
            sql += " WHERE stage=?"
            params = (stage,)
        for row in self._db.execute(sql + " ORDER BY id", params):
            yield dict(zip(cols, row))
