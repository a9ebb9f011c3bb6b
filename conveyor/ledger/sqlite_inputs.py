"""How the SQLite ledger takes a run's inputs in: a first run's, and a rerun's compared
with the rows held.

A mixin of :class:`~conveyor.ledger.sqlite.SqliteLedger` (kept apart so that
the module that records results stays readable). It writes through the
ledger's ``_write()`` connection and uses its ``_drop_derived`` to remove what
was derived from a changed input.
"""

from __future__ import annotations

import gc
import itertools
import sqlite3
from array import array
from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from .. import codec
from ..errors import InputError
from ..items import Inputs
from ..store import Stored
from . import blocks, sql
from .base import InputReport

INPUT_CHUNK = 5000  # inputs taken in per statement group


class SqliteInputs:
    """Taking inputs in over ``self._db``; see the module docstring."""

    _db: sqlite3.Connection

    def add_inputs(self, stage: str, inputs: Iterable[tuple[str, Stored]]) -> InputReport:
        with _without_gc():
            return self._add_inputs(stage, inputs)

    def _add_inputs(self, stage: str, inputs: Iterable[tuple[str, Stored]]) -> InputReport:
        db = self._write()
        given = inputs if isinstance(inputs, Inputs) else Inputs(inputs)
        if db.execute("SELECT 1 FROM items WHERE stage=? LIMIT 1", (stage,)).fetchone() is None:
            if given.ahead(blocks.SMALLEST_RUN) < blocks.SMALLEST_RUN:
                return self._add_first_inputs(stage, given)
            return InputReport(self._add_blocks(stage, given), 0, 0, [])
        if self._has_blocks(stage):
            return self._compare_blocks(stage, given)
        given = iter(given)
        db.execute("DELETE FROM temp.seen")
        counts = [0, 0, 0]  # added, changed, unchanged
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
                [(stage, key, "pending", next_id + n, v.digest, None, None)
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
            rows.append((stage, key, "pending", next_id, value.digest, None, None))
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
            db.executemany("INSERT INTO items(stage, key, status, input_id, input_digest, "
                           "raw_digest, key_crcs) VALUES(?, ?, ?, ?, ?, ?, ?)", rows)
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
        if len(rows) == len(keys) or not self._has_blocks(stage):
            return len(rows)
        # The others are items of blocks: each block holding one goes, and its other
        # items come back in new blocks (to be computed again: a block is done whole).
        dropped = set(keys)
        held = self._held_blocks(stage)
        touched = {block for key, (block, _) in held.items() if key in dropped}
        kept = [(key, stored) for _, key, stored in self._block_items(touched)
                if key not in dropped]
        self._replace_blocks(stage, touched, blocks.cut(Inputs(kept)))
        return len(rows) + sum(1 for key in dropped if key in held)

    # -- blocks (see conveyor.ledger.blocks) ----------------------------------------------

    def _has_blocks(self, stage: str) -> bool:
        return self._db.execute(
            f"SELECT 1 FROM items WHERE stage=? AND {sql.BLOCK_KEY.format(col='key')} LIMIT 1",
            (stage,)).fetchone() is not None

    def _add_blocks(self, stage: str, inputs: Inputs) -> int:
        """Inputs taken in as block rows (a large run's); returns how many items.

        Keys are checked for repeats once all are in, over their 64-bit hashes
        (8 bytes a key, where a set of a million keys would hold a hundred MB). A hash is
        Python's ``hash(key)``: the check runs in one process.
        """
        return self._write_blocks(stage, blocks.cut(inputs), check=True)

    def _write_blocks(self, stage: str, cut: Iterable[blocks.Block | blocks.Skipped],
                      check: bool) -> int:
        """Rows for blocks ``cut`` (none skipped); how many items; see :meth:`_add_blocks`."""
        db = self._db
        hashes = array("q")
        added = 0
        values: list[tuple[Any, ...]] = []
        rows: list[tuple[Any, ...]] = []
        (next_id,) = db.execute("SELECT coalesce(max(id), 0) + 1 FROM outputs").fetchone()
        for block in cut:
            hashes.extend(block.hashes)
            data = block.packed()
            values.append((next_id, None, 0, block.key, data, None, block.digest, len(data)))
            rows.append((stage, block.key, "pending", next_id, block.digest, block.raw,
                         block.crcs))
            next_id += 1
            added += len(block.items)
            if len(rows) >= 64:
                self._insert_inputs(values, rows)
                values, rows = [], []
        self._insert_inputs(values, rows)
        if check:
            self._check_repeats(hashes, self._keys_in(
                i for (i,) in db.execute("SELECT id FROM items WHERE stage=?", (stage,))))
        return added

    def _check_repeats(self, hashes: "array[int]", keys: Iterable[str],
                       held: "array[int] | None" = None) -> None:
        """Raise ``InputError`` naming a key given twice, if one was: ``hashes`` are the
        given keys' (see :meth:`_add_blocks`), ``keys`` those keys, read again only
        when two hashes are equal. ``held``: hashes of more keys given (a rerun's
        matched blocks), distinct among themselves, that ``hashes`` must not repeat;
        ``keys`` then names them too."""
        twice: set[int] = set()
        if held is None:
            buckets: list[array[int]] = [array("q") for _ in range(256)]
            for h in hashes:  # a set of a bucket at a time: a 256th of the keys in memory
                buckets[h & 255].append(h)
            for bucket in buckets:
                twice |= _repeated(bucket, set(bucket))
        else:  # a few loose keys against many held: one small set
            loose = set(hashes)
            twice = _repeated(hashes, loose) | loose.intersection(held)
        if not twice:
            return
        seen: set[str] = set()  # a shared hash is a repeated key, or (rarely) two keys
        for key in keys:
            if hash(key) in twice:
                if key in seen:
                    raise InputError(f"duplicate input key {key!r}")
                seen.add(key)

    def _keys_in(self, rows: Iterable[int]) -> Iterator[str]:
        """The input keys held in the rows ``rows`` (items of blocks, or items)."""
        for chunk in sql.chunks(sorted(rows)):
            for key, data in self._db.execute(
                    f"SELECT i.key, o.data FROM items i JOIN outputs o ON o.id = i.input_id "
                    f"WHERE i.id IN ({sql.marks(len(chunk))})", chunk):
                if blocks.is_block(key):
                    yield from (element[0] for element in blocks.elements(data))
                else:
                    yield key

    def _key_crcs(self, rows: list[int]) -> Iterator[tuple[int, "array[int]"]]:
        """Each block row of ``rows`` with its keys' CRCs (see blocks.crc): rows a rerun
        skipped, which have them (kept with the raw digest that skips them)."""
        for chunk in sql.chunks(rows):
            for row_id, data in self._db.execute(
                    f"SELECT id, key_crcs FROM items WHERE id IN ({sql.marks(len(chunk))})",
                    chunk):
                yield row_id, blocks.crcs(data)

    def _held_blocks(self, stage: str, skip: frozenset[int] = frozenset()
                     ) -> dict[str, tuple[int, str | None]]:
        """Each item in ``stage``'s block rows (but those in ``skip``): its block's row
        id and its input's digest (values not encoded again: see :meth:`_block_items`)."""
        ids = [i for (i,) in self._db.execute(
            f"SELECT id FROM items WHERE stage=? AND {sql.BLOCK_KEY.format(col='key')}",
            (stage,)) if i not in skip]
        held: dict[str, tuple[int, str | None]] = {}
        for row_id, data in self._block_values(ids):
            for key, _, _, digest in blocks.elements(data):
                held[key] = (row_id, digest)
        return held

    def _block_items(self, rows: Iterable[int]) -> Iterator[tuple[int, str, Stored]]:
        """Each item of the block rows ``rows``: its row id, key and stored input."""
        for row_id, data in self._block_values(sorted(rows)):
            for item in blocks.unpack(data):
                yield row_id, item.key, Stored(item.data, item.ref, item.digest,
                                               len(item.data or b""))

    def _block_values(self, rows: list[int]) -> Iterator[tuple[int, bytes]]:
        for chunk in sql.chunks(rows):
            yield from self._db.execute(
                f"SELECT i.id, o.data FROM items i JOIN outputs o ON o.id = i.input_id "
                f"WHERE i.id IN ({sql.marks(len(chunk))})", chunk)

    def _replace_blocks(self, stage: str, gone: set[int], new: Iterable[blocks.Block]) -> None:
        """Remove block rows ``gone`` with all derived from them; write blocks ``new``."""
        db = self._db
        ids = sorted(gone)
        self._drop_derived(ids)  # type: ignore[attr-defined]
        for chunk in sql.chunks(ids):
            marks = sql.marks(len(chunk))
            db.execute(f"DELETE FROM outputs WHERE id IN (SELECT input_id FROM items "
                       f"WHERE id IN ({marks}))", chunk)
            db.execute(f"DELETE FROM items WHERE id IN ({marks})", chunk)
        self._write_blocks(stage, new, check=False)

    def _compare_blocks(self, stage: str, given: Inputs) -> InputReport:
        """A rerun's inputs against a stage held in blocks.

        The inputs are cut into blocks as before. Where a held block's inputs
        come again as they were given (its raw digest), they are skipped whole,
        none of them looked at one by one (a million inputs: two thousand
        blocks, a fraction of a second). A block cut item by item whose key and
        digest a row already has is unchanged too. Only the items of the other
        blocks are compared one by one: with the stage's item rows (an item split
        from its block keeps its row), else with the items of the blocks not
        matched. A held block with an item changed is made again: its items, given
        again or not, go into new blocks, to be computed again. A held block whose
        items come again unchanged stays, in whatever order or blocks they came.
        """
        db = self._db
        matched, hashes = array("q"), array("q")  # keys' hashes: of matched blocks, others
        seen: set[int] = set()
        skipped: list[int] = []  # blocks matched unlooked-at: their keys' hashes not known
        unchanged = 0
        loose_blocks: list[blocks.Block] = []
        skippable = {blocks.first_key(key): blocks.Held(row, blocks.size(key), raw)
                     for row, key, raw in db.execute(
                         f"SELECT id, key, raw_digest FROM items WHERE stage=? AND "
                         f"{sql.BLOCK_KEY.format(col='key')} AND raw_digest IS NOT NULL",
                         (stage,))}
        for block in blocks.cut(given, skippable):
            if isinstance(block, blocks.Skipped):
                if block.row in seen:  # the same block twice: each of its keys repeated
                    raise InputError(f"duplicate input key {block.first!r}")
                seen.add(block.row)
                skipped.append(block.row)
                unchanged += block.size
                continue
            row = db.execute("SELECT id, input_digest, raw_digest FROM items "
                             "WHERE stage=? AND key=?", (stage, block.key)).fetchone()
            if row is not None and row[1] == block.digest:
                if row[0] in seen:  # as above
                    raise InputError(f"duplicate input key {block.items[0][0]!r}")
                seen.add(row[0])
                matched.extend(block.hashes)
                unchanged += len(block.items)
                if block.raw is not None and row[2] != block.raw:  # skipped next time
                    db.execute("UPDATE items SET raw_digest=?, key_crcs=? WHERE id=?",
                               (block.raw, block.crcs, row[0]))
            else:
                hashes.extend(block.hashes)
                loose_blocks.append(block)
        loose = [item for block in loose_blocks for item in block.items]
        if loose:  # blocks matched hold distinct keys (checked when written): only the
            # others can repeat a key, among themselves or a matched block's
            self._check_repeats(hashes, itertools.chain((key for key, _ in loose),
                                                        self._keys_in(seen)), held=matched)
        (rows,) = db.execute("SELECT count(*) FROM items WHERE stage=?", (stage,)).fetchone()
        if not loose and rows == len(seen):
            return InputReport(0, 0, unchanged, [])
        counts = [0, 0, unchanged]  # added, changed, unchanged, as _compare_inputs keeps them
        plain_keys = [key for (key,) in db.execute(
            f"SELECT key FROM items WHERE stage=? AND NOT {sql.BLOCK_KEY.format(col='key')}",
            (stage,))]
        plain = set(plain_keys)
        held = self._held_blocks(stage, skip=frozenset(seen))
        new = [key for key, _ in loose if key not in plain and key not in held]
        if new and skipped:  # a key the ledger holds is in one row only: only a new one
            # can repeat a key of a block skipped (whose keys were not looked at), and
            # only one of those whose keys' CRCs have its CRC
            wanted = {blocks.crc(key) for key in new}
            suspects = [row for row, kept in self._key_crcs(skipped)
                        if not wanted.isdisjoint(kept)]
            self._check_repeats(array("q", map(hash, new)),
                                itertools.chain(new, self._keys_in(suspects)),
                                held=array("q", map(hash, self._keys_in(suspects))))
        if plain:  # items split from their blocks, compared as a rerun of item rows
            db.execute("DELETE FROM temp.seen")
            self._compare_inputs(stage, [(k, v) for k, v in loose if k in plain], 0, None,
                                 counts)
            loose = [(k, v) for k, v in loose if k not in plain]
            seen_plain = {k for (k,) in db.execute(
                "SELECT i.key FROM items i JOIN temp.seen s ON s.id = i.id")}
            db.execute("DELETE FROM temp.seen")
        else:
            seen_plain = set()
        touched: set[int] = set()  # held blocks with an item changed: made again
        given_keys = set()
        for key, value in loose:
            given_keys.add(key)
            old = held.get(key)
            if old is None:
                counts[0] += 1
            elif old[1] == value.digest:
                counts[2] += 1  # kept where it is, wherever it came (another order)
            else:
                touched.add(old[0])
                counts[1] += 1
        # The blocks given are written as cut (with their raw digests: skipped next
        # time) where all their items are to be written: new, or of a block made again;
        # else those items alone, in new blocks. The items of blocks made again that
        # were not given go into blocks of their own, which a rerun that leaves them
        # out again leaves alone.
        whole: list[blocks.Block] = []
        pieces: list[tuple[str, Stored]] = []
        for block in loose_blocks:
            items = [(key, value) for key, value in block.items if key not in plain
                     and (key not in held or held[key][0] in touched)]
            if len(items) == len(block.items):
                whole.append(block)
            else:
                pieces.extend(items)
        kept = [(key, stored) for _, key, stored in self._block_items(touched)
                if key not in given_keys]
        self._replace_blocks(stage, touched, itertools.chain(
            whole, blocks.cut(Inputs(pieces)), blocks.cut(Inputs(kept))))
        missing = sorted([key for key, (block, _) in held.items() if key not in given_keys]
                         + [key for key in plain_keys if key not in seen_plain])
        return InputReport(*counts, missing)


@contextmanager
def _without_gc() -> Iterator[None]:
    """Python's cycle collector off: a rerun that compares inputs one by one holds up to a
    million of them, and each collection of the oldest generation walks them all again
    (a rerun of 1,000,000 inputs given in another order: 36 s with it, 25 s without)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _repeated(hashes: "array[int]", distinct: set[int]) -> set[int]:
    """The hashes that ``hashes`` holds more than once (``distinct``: its set)."""
    if len(distinct) == len(hashes):
        return set()
    return {h for h, n in Counter(hashes).items() if n > 1}
