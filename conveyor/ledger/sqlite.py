"""The SQLite ledger: one file in the run directory, WAL mode, grouped commits.

``synchronous=FULL`` makes each :meth:`SqliteLedger.commit` durable against
power loss, not only against a crash of the process; the driver commits a
group of writes every few tens of milliseconds, so durability costs one sync
per group, never one per item.

Tables::

    items    one row per (stage, key): status, attempts, the value it reads
             (input_id), and its output when it has exactly one (out_*); a
             block row of inputs also the digest of its inputs as given
             (raw_digest: see conveyor.items.raw_digest) and its keys' CRCs
             (key_crcs: see conveyor.ledger.blocks.crc)
    outputs  the other values: run inputs (item_id NULL) and the outputs of
             rows that produced none or several
    gathers  (stage, value id[, group key, partition]): the values a reduce or a
             group stage will read
    stages   the fingerprint each stage last ran with
    meta     run-level facts (pipeline name, stage order, schema version)

A *value id* names a value wherever it lives: a positive id is an
``outputs`` row, a negative one the single output kept in the ``items`` row
``-id``. Most stages return one value per item, so most values cost no row of
their own.

Writes are shaped for throughput: :meth:`SqliteLedger.record` turns a whole
batch of results into a few ``executemany`` statements with ids it assigns
itself, and the queue of pending rows is a partial index that holds pending
rows only, so finishing a row touches no queue index. A batch whose keys
collide (a diamond's second arrival, a real collision) is rolled back and
replayed one record at a time, each under its own savepoint.

The statements are in :mod:`.sql`; taking a run's inputs in (a first run's,
a rerun's compared with the rows held) in :mod:`.sqlite_inputs`; the queries
that only read (views, reruns, barriers) in :mod:`.sqlite_reads`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Iterable

from ..errors import IllegalTransition, LedgerError
from . import blocks, sql
from .base import (
    Claim,
    KeyCollision,
    Ledger,
    Record,
    Refused,
    Status,
    orphan,
    transition,
)
from .sqlite_inputs import SqliteInputs
from .sqlite_reads import SqliteReads


class SqliteLedger(SqliteInputs, SqliteReads, Ledger):
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
                if not self._db.execute(
                        "SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone():
                    raise LedgerError(f"the ledger {self.path} has no tables yet: its run "
                                      f"is starting; look again in a moment")
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, isolation_level=None,
                                           check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.execute("PRAGMA cache_size=-16384")  # 16 MiB: random keys stay cached
            if not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._migrate()
                # one transaction: a reader sees no tables or all of them, never a part
                self._db.executescript(f"BEGIN IMMEDIATE; {sql.SCHEMA} "
                                       f"INSERT OR IGNORE INTO meta VALUES('schema', "
                                       f"'{sql.SCHEMA_VERSION}'); COMMIT;")
                version = self._db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
                if version[0] != sql.SCHEMA_VERSION:
                    raise LedgerError(f"the ledger {self.path} has schema {version[0]}; this "
                                      f"conveyor reads schema {sql.SCHEMA_VERSION}")
                self._db.executescript(
                    "CREATE TEMP TABLE frontier(id INTEGER PRIMARY KEY);"
                    "CREATE TEMP TABLE doomed_values(id INTEGER PRIMARY KEY);"
                    "CREATE TEMP TABLE doomed_items(id INTEGER PRIMARY KEY);"
                    "CREATE TEMP TABLE seen(id INTEGER PRIMARY KEY, chunk INTEGER);")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"cannot open the ledger {self.path}: {exc}") from None
        self._in_tx = False

    def _migrate(self) -> None:
        """Bring a ledger an older conveyor wrote to this schema, in one transaction."""
        db = self._db
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone():
            return  # a new ledger
        version = db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
        while version is not None and version[0] in sql.MIGRATIONS:
            db.executescript(f"BEGIN; {sql.MIGRATIONS[version[0]]} "
                             f"UPDATE meta SET value='{int(version[0]) + 1}' "
                             f"WHERE name='schema'; COMMIT;")
            version = db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()

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

    def reset_stage(self, stage: str) -> int:
        db = self._write()
        ids = [i for (i,) in db.execute("SELECT id FROM items WHERE stage=?", (stage,))]
        self._drop_derived(ids)
        db.execute(f"UPDATE items SET status='pending', attempts=0, error=NULL, traceback=NULL, "
                   f"not_before=NULL, {sql.CLEAR_OUTPUT} WHERE stage=?", (stage,))
        return len(ids)

    def recompute(self, item_ids: Iterable[int]) -> None:
        db = self._write()
        ids = list(item_ids)
        self._drop_derived(ids)
        db.executemany(f"UPDATE items SET status='pending', attempts=0, error=NULL, "
                       f"traceback=NULL, not_before=NULL, {sql.CLEAR_OUTPUT} WHERE id=?",
                       ((i,) for i in ids))

    def drop_stage(self, stage: str) -> int:
        db = self._write()
        ids = [i for (i,) in db.execute("SELECT id FROM items WHERE stage=?", (stage,))]
        self._drop_derived(ids)
        db.execute("DELETE FROM gathers WHERE stage=?", (stage,))
        return db.execute("DELETE FROM items WHERE stage=?", (stage,)).rowcount

    def _drop_derived(self, item_ids: list[int]) -> None:
        """Remove the outputs of ``item_ids`` and every row and value derived from them.

        Level by level: the values the frontier rows produced, the rows that
        read those values, and so on down. The frontier rows themselves stay.
        """
        if not item_ids:
            return
        db = self._write()
        db.execute("DELETE FROM temp.frontier")
        db.execute("DELETE FROM temp.doomed_values")
        db.execute("DELETE FROM temp.doomed_items")
        db.executemany("INSERT INTO temp.frontier VALUES(?)", ((i,) for i in item_ids))
        while True:
            db.execute("INSERT OR IGNORE INTO temp.doomed_values "
                       "SELECT -i.id FROM items i JOIN temp.frontier f ON f.id = i.id "
                       "WHERE i.n_out = 1")
            db.execute("INSERT OR IGNORE INTO temp.doomed_values "
                       "SELECT o.id FROM outputs o JOIN temp.frontier f ON f.id = o.item_id")
            db.execute("DELETE FROM temp.frontier")
            added = db.execute(
                "INSERT OR IGNORE INTO temp.frontier SELECT i.id FROM items i "
                "WHERE i.input_id IN (SELECT id FROM temp.doomed_values) "
                "AND i.id NOT IN (SELECT id FROM temp.doomed_items)").rowcount
            if not added:
                break
            db.execute("INSERT OR IGNORE INTO temp.doomed_items SELECT id FROM temp.frontier")
        db.execute("DELETE FROM items WHERE id IN (SELECT id FROM temp.doomed_items)")
        db.execute("DELETE FROM gathers WHERE value_id IN (SELECT id FROM temp.doomed_values)")
        db.execute("DELETE FROM outputs WHERE id IN (SELECT id FROM temp.doomed_values)")
        db.executemany(f"UPDATE items SET {sql.CLEAR_OUTPUT} WHERE id=?", ((i,) for i in item_ids))

    def route(self, target: str, key: str, output_id: int, source: str) -> None:
        self._write()
        self._route(target, key, output_id, source, None)

    def gather(self, stage: str, output_id: int, gkey: str | None = None,
               part: int | None = None) -> None:
        self._write().execute(sql.INSERT_GATHER.replace("INSERT", "INSERT OR IGNORE", 1),
                              (stage, output_id, gkey, part))

    def refresh_routed(self, stage: str) -> None:
        taken = ("EXISTS (SELECT 1 FROM items d WHERE d.input_id = {v}) OR "
                 "EXISTS (SELECT 1 FROM gathers g WHERE g.value_id = {v})")
        self._write().execute(
            f"UPDATE items SET status = CASE WHEN "
            f"  (n_out = 1 AND ({taken.format(v='-items.id')})) OR "
            f"  EXISTS (SELECT 1 FROM outputs o WHERE o.item_id = items.id "
            f"          AND ({taken.format(v='o.id')}))"
            f" THEN 'done' ELSE 'routed-out' END "
            f"WHERE stage=? AND status IN ('done', 'routed-out') AND n_out > 0", (stage,))

    def retry_failed(self, stage: str | None = None) -> int:
        sql = ("UPDATE items SET status='pending', attempts=0, not_before=NULL "
               "WHERE status='failed'")
        if stage is None:
            return self._write().execute(sql).rowcount
        return self._write().execute(sql + " AND stage=?", (stage,)).rowcount

    # -- work ------------------------------------------------------------------------

    def claim(self, stage: str, limit: int, worker: str, now: float,
              max_bytes: int | None = None, blocks: bool | None = None) -> list[Claim]:
        db = self._write()
        col = "i.input_id"
        # Block rows through their own index: the (stage, key) one would read every
        # block the stage holds, done or not, for each claim.
        kind = "" if blocks is None else (
            f"AND {'' if blocks else 'NOT '}{sql.BLOCK_KEY.format(col='i.key')} ")
        index = "INDEXED BY items_pending_blocks " if blocks else ""
        rows = db.execute(
            f"SELECT i.id, i.stage, i.key, i.attempts + 1, {sql.VALUE_DATA.format(col=col)}, "
            f"{sql.VALUE_REF.format(col=col)} FROM items i {index}"
            f"{sql.VALUE_JOIN.format(col=col)} "
            f"WHERE i.stage=? AND i.status='pending' {kind}"
            f"AND (i.not_before IS NULL OR i.not_before <= ?) ORDER BY i.id LIMIT ?",
            (stage, now, limit)).fetchall()
        if max_bytes is not None:
            rows = sql.within(rows, max_bytes, lambda r: len(r[4] or b""))
        for chunk in sql.chunks([r[0] for r in rows]):
            db.execute(
                f"UPDATE items SET status='running', attempts=attempts+1, worker=?, started=?, "
                f"ended=NULL, not_before=NULL WHERE id IN ({sql.marks(len(chunk))})",
                (worker, now, *chunk))
        return [tuple.__new__(Claim, r) for r in rows]  # see from_wire

    def record(self, records: list[Record], worker: str | None = None) -> list[Refused]:
        db = self._write()
        existing: dict[int, str] = {}  # row id -> its stage
        for chunk in sql.chunks([r.item_id for r in records if r.item_id is not None]):
            for row_id, stage, status in db.execute(
                    f"SELECT id, stage, status FROM items WHERE id IN ({sql.marks(len(chunk))})",
                    chunk):
                existing[row_id] = stage
                if status != Status.RUNNING.value:
                    wanted = next(r.status for r in records if r.item_id == row_id)
                    raise IllegalTransition(f"an item cannot go from {status} to {wanted}: "
                                            f"only a running item has a result to record")
        for r in records:
            if r.item_id is not None and r.item_id not in existing:
                raise IllegalTransition(f"no item with id {r.item_id}")
        db.execute("SAVEPOINT batch")
        try:
            self._apply_all(records, worker)
        except (sqlite3.IntegrityError, KeyCollision):
            db.execute("ROLLBACK TO batch")
            db.execute("RELEASE batch")
            return self._apply_each(records, existing, worker)
        db.execute("RELEASE batch")
        return []

    def _next_ids(self) -> sql.Batch:
        (item,) = self._db.execute("SELECT coalesce(max(id), 0) + 1 FROM items").fetchone()
        (output,) = self._db.execute("SELECT coalesce(max(id), 0) + 1 FROM outputs").fetchone()
        return sql.Batch(item, output)

    def _apply_all(self, records: list[Record], worker: str | None) -> None:
        """The fast path: every record at once, in a few statements."""
        fused = {(r.stage, r.key): r for r in records if r.item_id is None}
        created: dict[tuple[str, str], int] = {}
        batch = self._next_ids()
        for r in records:
            if r.item_id is None:
                row_id = created.get((r.stage, r.key))
                if row_id is None:
                    raise KeyCollision("parent not recorded")  # resolved on the slow path
            else:
                row_id = r.item_id
                plain = sql.plain(r)
                if plain is None:
                    batch.updates.append((r.status, r.retry_at, r.error, r.traceback,
                                          r.worker or worker, r.started, r.ended,
                                          *sql.own_output(r.key, r.outputs), row_id))
                else:
                    batch.plain_updates.append((r.status, r.worker or worker, r.started,
                                                r.ended, *plain, row_id))
            inline = len(r.outputs) == 1
            for seq, out in enumerate(r.outputs):
                if inline:
                    value_id = -row_id
                else:
                    value_id = batch.next_output
                    batch.next_output += 1
                    v = out.value
                    batch.outputs.append((value_id, row_id, seq, out.key, v.data, v.ref,
                                          v.digest, v.size))
                for target in out.targets:
                    row = batch.next_item
                    batch.next_item += 1
                    child = fused.get((target, out.key))
                    if child is None:
                        batch.pending_items.append((row, target, out.key, value_id))
                        continue
                    created[(target, out.key)] = row
                    plain = sql.plain(child)
                    if plain is None:
                        batch.items.append(sql.new_row(row, target, out.key, value_id, child,
                                                    worker))
                    else:
                        batch.plain_items.append((row, target, out.key, child.status,
                                                  child.attempt, value_id,
                                                  child.worker or worker, child.started,
                                                  child.ended, *plain))
                batch.gathers.extend((g, value_id, gkey, part) for g, gkey, part in out.gathers)
        db = self._db
        db.executemany(sql.UPDATE_ITEM, batch.updates)
        db.executemany(sql.UPDATE_PLAIN, batch.plain_updates)
        db.executemany(sql.INSERT_OUTPUT, batch.outputs)
        db.executemany(sql.INSERT_ITEM, batch.items)
        db.executemany(sql.INSERT_PLAIN, batch.plain_items)
        db.executemany(sql.INSERT_PENDING, batch.pending_items)
        db.executemany(sql.INSERT_GATHER, batch.gathers)

    def _apply_each(self, records: list[Record], existing: dict[int, str],
                    worker: str | None) -> list[Refused]:
        """The slow path: one record at a time, qualifying union keys, refusing collisions."""
        db = self._db
        fused = {(r.stage, r.key): r for r in records if r.item_id is None}
        created: dict[tuple[str, str], int] = {}
        refused: list[Refused] = []
        for r in records:
            if r.item_id is None and (r.stage, r.key) not in created:
                refused.append(orphan(r))
                continue
            row_id = r.item_id if r.item_id is not None else created[(r.stage, r.key)]
            source = existing[r.item_id] if r.item_id is not None else r.stage
            made: dict[tuple[str, str], int] = {}
            db.execute("SAVEPOINT one")
            try:
                if r.item_id is not None:
                    db.execute(sql.UPDATE_ITEM, (r.status, r.retry_at, r.error, r.traceback,
                                              r.worker or worker, r.started, r.ended,
                                              *sql.own_output(r.key, r.outputs), r.item_id))
                inline = len(r.outputs) == 1
                for seq, out in enumerate(r.outputs):
                    v = out.value
                    value_id = -row_id if inline else db.execute(
                        "INSERT INTO outputs(item_id, seq, key, data, ref, digest, size) "
                        "VALUES(?, ?, ?, ?, ?, ?, ?)",
                        (row_id, seq, out.key, v.data, v.ref, v.digest, v.size)).lastrowid
                    for target in out.targets:
                        made[(target, out.key)] = self._route(
                            target, out.key, value_id, source, fused.get((target, out.key)),
                            worker)
                    db.executemany(sql.INSERT_GATHER.replace("INSERT", "INSERT OR IGNORE", 1),
                                   ((g, value_id, gkey, part) for g, gkey, part in out.gathers))
            except KeyCollision as exc:
                db.execute("ROLLBACK TO one")
                db.execute("RELEASE one")
                refused.append(Refused(r, str(exc)))
                continue
            db.execute("RELEASE one")
            created.update((k, v) for k, v in made.items() if k in fused)
        return refused

    def _route(self, target: str, key: str, value_id: int, source: str,
               done: Record | None, worker: str | None = None) -> int:
        """Insert ``target``'s row for a value; a union's second arrival gets ``key@source``."""
        db = self._db
        (next_id,) = db.execute("SELECT coalesce(max(id), 0) + 1 FROM items").fetchone()
        insert = sql.INSERT_ITEM.replace("INSERT", "INSERT OR IGNORE", 1)
        if db.execute(insert, sql.new_row(next_id, target, key, value_id, done, worker)).rowcount:
            return next_id
        holder = db.execute(
            "SELECT coalesce(p.stage, q.stage, '') FROM items i "
            "LEFT JOIN items p ON i.input_id < 0 AND p.id = -i.input_id "
            "LEFT JOIN outputs o ON i.input_id > 0 AND o.id = i.input_id "
            "LEFT JOIN items q ON q.id = o.item_id WHERE i.stage=? AND i.key=?",
            (target, key)).fetchone()
        if holder and holder[0] != source:
            qualified = f"{key}@{source}"
            if db.execute(insert, sql.new_row(next_id, target, qualified, value_id, done,
                                           worker)).rowcount:
                return next_id
        raise KeyCollision(
            f"stage {target!r} already has an item keyed {key!r} from stage {source!r}; "
            f"yield conveyor.Item(key, value) with distinct keys")

    def split(self, item_ids: Iterable[int]) -> int:
        db = self._write()
        made = 0
        for row_id in item_ids:
            row = db.execute("SELECT stage, key, status, attempts, input_id FROM items "
                             "WHERE id=?", (row_id,)).fetchone()
            if row is None or not blocks.is_block(row[1]):
                raise LedgerError(f"row {row_id} is not a block")
            stage, key, status, attempts, input_id = row
            if status not in (Status.PENDING, Status.RUNNING):
                raise IllegalTransition(f"a {status} block cannot be split")
            if status == Status.RUNNING:
                attempts = max(attempts - 1, 0)
            if input_id < 0:  # the packed output of a block row upstream
                data, producer, source = (*db.execute(
                    "SELECT out_data, id, stage FROM items WHERE id=?", (-input_id,)
                ).fetchone(),)
            else:  # a block of run inputs
                (data,) = db.execute("SELECT data FROM outputs WHERE id=?",
                                     (input_id,)).fetchone()
                producer = source = None
            db.execute("DELETE FROM items WHERE id=?", (row_id,))
            if producer is None:
                db.execute("DELETE FROM outputs WHERE id=?", (input_id,))
            for seq, item in enumerate(blocks.unpack(data)):
                value_id = db.execute(
                    "INSERT INTO outputs(item_id, seq, key, data, ref, digest, size) "
                    "VALUES(?, ?, ?, ?, ?, ?, ?)", (producer, seq, item.key, item.data,
                                                    item.ref, item.digest,
                                                    len(item.data or b""))).lastrowid
                if source is None:
                    db.execute("INSERT INTO items(stage, key, status, attempts, input_id, "
                               "input_digest) VALUES(?, ?, 'pending', ?, ?, ?)",
                               (stage, item.key, attempts, value_id, item.digest))
                else:  # keyed as a row routed from ``source`` would be
                    new = self._route(stage, item.key, value_id, source, None)
                    db.execute("UPDATE items SET attempts=? WHERE id=?", (attempts, new))
                made += 1
        return made

    def release(self, item_ids: Iterable[int]) -> None:
        db = self._write()
        ids = list(item_ids)
        for chunk in sql.chunks(ids):
            for row_id, status in db.execute(
                    f"SELECT id, status FROM items WHERE id IN ({sql.marks(len(chunk))})", chunk):
                transition(status, Status.PENDING)
            db.execute(f"UPDATE items SET status='pending', attempts=max(attempts-1, 0), "
                       f"worker=NULL WHERE id IN ({sql.marks(len(chunk))})", chunk)

    # -- reduces and groups ----------------------------------------------------------

    def open_barrier(self, stage: str, key: str, input_digest: str) -> None:
        db = self._write()
        row = db.execute("SELECT id, status FROM items WHERE stage=? AND key=?",
                         (stage, key)).fetchone()
        if row is None:
            db.execute("INSERT INTO items(stage, key, status, input_digest) "
                       "VALUES(?, ?, 'pending', ?)", (stage, key, input_digest))
            return
        if row[1] != Status.PENDING:
            transition(row[1], Status.PENDING)
        self._drop_derived([row[0]])
        db.execute("UPDATE items SET status='pending', attempts=0, input_digest=?, error=NULL, "
                   "traceback=NULL, not_before=NULL WHERE id=?", (input_digest, row[0]))

    def close_barrier(self, stage: str, key: str) -> None:
        db = self._write()
        row = db.execute("SELECT id FROM items WHERE stage=? AND key=?", (stage, key)).fetchone()
        if row is not None:
            self._drop_derived([row[0]])
            db.execute("DELETE FROM items WHERE id=?", (row[0],))

