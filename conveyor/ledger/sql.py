"""The SQL of the SQLite ledger: its schema, its statements, and how rows become parameters.

Kept apart from :mod:`conveyor.ledger.sqlite`, which decides what to write
and when, so that the ledger's logic reads without the text of its
statements. That module's docstring describes the tables and what a *value
id* is.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Sequence

from ..errors import InputError
from .base import Output, Record

SCHEMA_VERSION = "6"

# Whether the key in ``col`` is a block row's: it starts with "\x1e" (char 30; see
# conveyor.ledger.blocks), and a range on the key reads the (stage, key) index.
BLOCK_KEY = "({col} >= char(30) AND {col} < char(31))"

SCHEMA = f"""
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
    not_before REAL,
    error TEXT,
    traceback TEXT,
    worker TEXT,
    started REAL,
    ended REAL,
    n_out INTEGER,
    out_key TEXT,
    out_data BLOB,
    out_ref TEXT,
    out_digest TEXT,
    out_size INTEGER,
    raw_digest TEXT,
    key_crcs BLOB,
    UNIQUE(stage, key)
);
CREATE INDEX IF NOT EXISTS items_pending ON items(stage, id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS items_pending_blocks ON items(stage, id)
    WHERE status = 'pending' AND {BLOCK_KEY.format(col="key")};
CREATE INDEX IF NOT EXISTS items_input ON items(input_id);
CREATE TABLE IF NOT EXISTS outputs(
    id INTEGER PRIMARY KEY,
    item_id INTEGER,
    seq INTEGER NOT NULL,
    key TEXT NOT NULL,
    data BLOB,
    ref TEXT,
    digest TEXT,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outputs_item ON outputs(item_id);
CREATE TABLE IF NOT EXISTS gathers(
    stage TEXT NOT NULL,
    value_id INTEGER NOT NULL,
    gkey TEXT,
    part INTEGER,
    PRIMARY KEY(stage, value_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS gathers_value ON gathers(value_id);
"""
# No index on (stage, part, gkey): a group's values are sorted once, when it opens. An
# index kept up on every insert (random keys) cost about a quarter of the throughput of
# the stage feeding the group (300,000 values: 20,180 values/s with it, 24,700 without).

# What brings a ledger of an older schema to this one (run before SCHEMA).
MIGRATIONS = {
    "3": ("ALTER TABLE gathers ADD COLUMN gkey TEXT; "  # group stages (schema 4)
          "ALTER TABLE gathers ADD COLUMN part INTEGER;"),
    "4": "",  # block rows (schema 5): keys that say so, and their index (in SCHEMA)
    "5": "ALTER TABLE items ADD COLUMN raw_digest TEXT; "  # blocks' inputs as given and
         "ALTER TABLE items ADD COLUMN key_crcs BLOB;",  # their keys' CRCs (schema 6)
}
INSERT_GATHER = "INSERT INTO gathers(stage, value_id, gkey, part) VALUES(?, ?, ?, ?)"

ROW_COLUMNS = ("id, stage, key, status, attempts, input_id, not_before, error, traceback, "
                "worker, started, ended, n_out, out_key, out_data, out_ref, out_digest, out_size")
INSERT_ITEM = f"INSERT INTO items({ROW_COLUMNS}) VALUES({','.join('?' * 18)})"
# A rerun's inputs against a stage's rows: the chunk's keys as one JSON array, looked up
# in the (stage, key) index (CROSS JOIN keeps that order: SQLite would rather scan the
# stage's rows once per key).
PROBE_INPUTS = ("SELECT i.id, i.input_id, i.input_digest, j.key FROM json_each(?) j "
                "CROSS JOIN items i ON i.stage = ? AND i.key = j.value")
# ... and the stage's next rows in id order, read straight from the table (``+stage``:
# not through the (stage, key) index, which would sort them).
NEXT_INPUTS = ("SELECT id, input_id, input_digest, key FROM items "
               "WHERE +stage = ? AND id > ? ORDER BY id LIMIT ?")
# ... and the rows found, marked seen in one statement (a JSON array of their ids binds
# once, where one row per id costs five times as much).
MARK_SEEN = "INSERT INTO temp.seen SELECT value, ? FROM json_each(?)"
INSERT_OUTPUT = ("INSERT INTO outputs(id, item_id, seq, key, data, ref, digest, size) "
                  "VALUES(?, ?, ?, ?, ?, ?, ?, ?)")
UPDATE_ITEM = ("UPDATE items SET status=?, not_before=?, error=?, traceback=?, "
                "worker=coalesce(?, worker), started=?, ended=?, n_out=?, out_key=?, "
                "out_data=?, out_ref=?, out_digest=?, out_size=? WHERE id=?")
# The rows most writes are, with fewer values to bind (each bound value costs about as
# much as the rest of the row's insert): a new pending row, and a finished row with no
# error whose one output (if any) is inline under its own key; see plain.
INSERT_PENDING = ("INSERT INTO items(id, stage, key, status, attempts, input_id) "
                   "VALUES(?, ?, ?, 'pending', 0, ?)")
INSERT_PLAIN = ("INSERT INTO items(id, stage, key, status, attempts, input_id, worker, started, "
                 "ended, n_out, out_data, out_size) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
UPDATE_PLAIN = ("UPDATE items SET status=?, not_before=NULL, error=NULL, traceback=NULL, "
                 "worker=coalesce(?, worker), started=?, ended=?, n_out=?, out_key=NULL, "
                 "out_data=?, out_ref=NULL, out_digest=NULL, out_size=? WHERE id=?")
# A value by id, wherever it lives: (data, ref) of an outputs row or of a row's own output.
VALUE_JOIN = ("LEFT JOIN outputs o ON {col} > 0 AND o.id = {col} "
               "LEFT JOIN items p ON {col} < 0 AND p.id = -{col}")
VALUE_DATA = "CASE WHEN {col} < 0 THEN p.out_data ELSE o.data END"
VALUE_REF = "CASE WHEN {col} < 0 THEN p.out_ref ELSE o.ref END"
CLEAR_OUTPUT = "n_out=NULL, out_key=NULL, out_data=NULL, out_ref=NULL, out_digest=NULL, out_size=NULL"
# How many items a row stands for: n for a block row (key "\x1e<n>:<first key>"), else 1.
ROW_ITEMS = (f"CASE WHEN {BLOCK_KEY.format(col='key')} "
             f"THEN CAST(substr(key, 2, instr(key, ':') - 2) AS INTEGER) ELSE 1 END")
PARAMS = 900  # host parameters per IN (...) list, under SQLite's limit


def chunks(seq: Sequence[Any], size: int = PARAMS) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


def marks(n: int) -> str:
    return ",".join("?" * n)


def within(rows: list[Any], max_bytes: int, size: Callable[[Any], int]) -> list[Any]:
    """The longest prefix of ``rows`` within ``max_bytes`` (at least the first row)."""
    total = 0
    for n, row in enumerate(rows):
        total += size(row)
        if total > max_bytes and n > 0:
            return rows[:n]
    return rows


def own_output(key: str, outputs: list[Output]) -> tuple[Any, ...]:
    """The ``n_out, out_*`` columns of a row: its output inline when it has exactly one."""
    if len(outputs) != 1:
        return (len(outputs), None, None, None, None, None)
    out = outputs[0]
    v = out.value
    return (1, None if out.key == key else out.key, v.data, v.ref, v.digest, v.size)


def duplicate_key(keys: Iterable[str], earlier: Callable[[str], bool]) -> InputError | None:
    """The error naming the first key repeated within ``keys`` or held ``earlier``, if any."""
    seen: set[str] = set()
    for key in keys:
        if key in seen or earlier(key):
            return InputError(f"duplicate input key {key!r}")
        seen.add(key)
    return None


def plain(r: Record) -> tuple[int, bytes | None, int | None] | None:
    """``n_out, out_data, out_size`` of a record the plain statements can write, else None."""
    key = r.key
    if r.error is not None or r.traceback is not None or r.retry_at is not None:
        return None
    outputs = r.outputs
    if len(outputs) != 1:
        return len(outputs), None, None
    out = outputs[0]
    v = out.value
    if out.key != key or v.ref is not None or v.digest is not None:
        return None
    return 1, v.data, v.size


def new_row(row_id: int, stage: str, key: str, input_id: int, done: Record | None,
             worker: str | None) -> tuple[Any, ...]:
    """Values for a new items row: pending, or in the final state of a fused record."""
    if done is None:
        return (row_id, stage, key, "pending", 0, input_id, None, None, None, None, None, None,
                None, None, None, None, None, None)
    return (row_id, stage, key, done.status, done.attempt, input_id, done.retry_at,
            done.error, done.traceback, done.worker or worker, done.started, done.ended,
            *own_output(key, done.outputs))


class Batch:
    """The rows and values one :meth:`SqliteLedger.record` call writes."""

    def __init__(self, next_item: int, next_output: int) -> None:
        self.next_item, self.next_output = next_item, next_output
        self.items: list[tuple[Any, ...]] = []
        self.plain_items: list[tuple[Any, ...]] = []
        self.pending_items: list[tuple[Any, ...]] = []
        self.plain_updates: list[tuple[Any, ...]] = []
        self.outputs: list[tuple[Any, ...]] = []
        self.gathers: list[tuple[str, int]] = []
        self.updates: list[tuple[Any, ...]] = []
