"""Blocks: one ledger row standing for many items of a fast stage.

A row per (stage, item) costs the driver a durable write per item, which is
the ceiling for stages that take microseconds (issue 22 measured about 5,000
items/s for the SQLite ledger alone). So a large run's inputs are taken in as
*blocks*: one row per stage per block of a few hundred items, its value one
packed list. A block row moves through the same statuses as an item row; a
worker runs its items one by one through the group's chain and reports one
record per stage for the whole block, its outputs packed again.

A block row's key names it and says how many items it holds:
``"\\x1e<n>:<first item key>"`` (item keys never start with ``\\x1e``, see
:func:`conveyor.items.check_key`), so counts are ``n`` per row without reading
the value, and a union's qualified key (``...@stage``) keeps it.

A packed value is one JSON array, each element ``[key, value, ref, digest]``:
the item's own encoded value embedded as is (``null`` where it lives in a
file, ``ref``), and the digest of an input (``null`` for outputs). Packing
and unpacking never re-encode a value the worker already has.

An item gets a row of its own again (the block is *split*) whenever it needs
its own state: its stage turns out slow, an item of the block fails or
yields something other than one output under its own key, a worker dies in
the block. Blocks are cut where a key's hash says, not every n items, so
adding or removing one input changes one block, not all that follow it.

A block row of inputs also keeps the digest of its inputs as they were given
(:func:`conveyor.items.raw_digest`: one encoding of the whole list, in C). A
rerun that gives a block's inputs again as they were skips them whole, none
looked at one by one: a rerun of a million unchanged inputs costs a fraction of
a second, where keying and digesting each input costs seconds in Python. It
keeps its keys' CRCs too, so that a key the rerun has not seen before is looked
for only in the blocks skipped that may hold it.
"""

from __future__ import annotations

import hashlib
import zlib
from array import array
from typing import Any, Iterable, Iterator, Mapping, NamedTuple

import orjson

from ..items import BLOCK_MARK as MARK  # ASCII record separator
from ..items import Inputs
from ..store import Stored

TARGET = 512  # mean items per block: a boundary is a key whose hash is 0 mod TARGET
SMALLEST = 64  # no boundary before this many items
LARGEST = 2048  # a boundary at this many items whatever the keys
MOST_BYTES = 1 << 20  # nor past this many bytes of inline values
SMALLEST_RUN = 4 * TARGET  # fewer inputs than this are taken in as item rows

# Why a worker hands a block back to be split (a record's ``error``): an item of it
# failed (its items then run on their own, retried and failed as rows), or a stage's
# outputs do not fit a block (not one per item under its key, or routed differently),
# so that its group runs item rows from then on.
SPLIT = MARK + "split: an item of the block failed"
UNFIT = MARK + "unfit: the stage's outputs do not fit a block"


def is_block(key: str) -> bool:
    return key.startswith(MARK)


def size(key: str) -> int:
    """Items a row keyed ``key`` stands for: ``n`` for a block, else 1."""
    if not key.startswith(MARK):
        return 1
    return int(key[1:key.index(":")])


def block_key(first: str, n: int) -> str:
    return f"{MARK}{n}:{first}"


class Packed(NamedTuple):
    """One element of a packed value, as :func:`unpack` returns it (``data`` re-encoded)."""

    key: str
    data: bytes | None
    ref: str | None
    digest: str | None


def pack(items: Iterable[tuple[str, bytes | None, str | None, str | None]]) -> bytes:
    """One JSON array of ``[key, value, ref, digest]`` from already encoded values."""
    fragment = orjson.Fragment  # embeds encoded JSON as it is
    return orjson.dumps([[key, fragment(data) if data is not None else None, ref, digest]
                         for key, data, ref, digest in items])


def elements(data: bytes) -> list[list[Any]]:
    """A packed value's elements, values decoded: ``[key, value, ref, digest]`` each."""
    return orjson.loads(data)


def unpack(data: bytes) -> Iterator[Packed]:
    """A packed value's items, each value encoded on its own again."""
    dumps = orjson.dumps
    for key, value, ref, digest in orjson.loads(data):
        yield Packed(key, None if ref is not None else dumps(value), ref, digest)


def digest_of(keys: list[str], digests: list[str]) -> str:
    """The digest of a block of inputs: over its keys and their values' digests, in order."""
    return hashlib.blake2b(("\x00".join(keys) + "\x01" + "\x00".join(digests)).encode(),
                           digest_size=16).hexdigest()


class Block(NamedTuple):
    """Inputs cut into one block: their keys and stored values, the block's digest, its
    keys' hashes (``hash(key)``: for duplicate checks within this process), the
    digest of its inputs as given (:func:`conveyor.items.raw_digest`; None for some),
    and its keys' CRCs (:func:`crc`), which the ledger keeps."""

    key: str
    items: list[tuple[str, Stored]]
    digest: str
    hashes: list[int]
    raw: str | None
    crcs: bytes

    def packed(self) -> bytes:
        return pack((key, v.data, v.ref, v.digest) for key, v in self.items)


def crc(key: str) -> int:
    """A key's CRC-32: where blocks are cut, and what a block row keeps of each key (an
    ``array("I")`` of them as bytes), to find which blocks a rerun's new key may repeat
    without reading the blocks."""
    return zlib.crc32(key.encode())


def crcs(data: bytes) -> "array[int]":
    """The key CRCs a block row keeps."""
    return array("I", data)


class Held(NamedTuple):
    """A block row a rerun's inputs may be: its id, how many items, their raw digest."""

    row: int
    size: int
    raw: str


class Skipped(NamedTuple):
    """Inputs taken as the held block ``row`` is, unlooked-at: ``first`` is its first key."""

    row: int
    size: int
    first: str


def first_key(key: str) -> str:
    """The key of the first item of the block row keyed ``key``."""
    return key[key.index(":") + 1:]


def cut(inputs: Inputs, held: Mapping[str, Held] | None = None
        ) -> Iterator[Block | Skipped]:
    """The inputs in blocks with content-defined boundaries (see the module docstring):
    a boundary follows a key whose CRC is 0 mod ``TARGET``, the same in every process.

    ``held``: a rerun's block rows by their first key. Where the next inputs
    start as one does and are given as they were (their raw digest), they are
    skipped whole: an unchanged rerun does next to nothing per input. After a
    changed block, boundaries fall where they fell before, so the next block
    is skipped again.
    """
    mask = TARGET - 1
    crc32 = zlib.crc32
    while True:
        if held:
            first = inputs.next_key()
            block = held.get(first)  # type: ignore[arg-type]  (None: not held)
            if block is not None and inputs.skip(block.size, block.raw):
                yield Skipped(block.row, block.size, first)
                continue
        items: list[tuple[str, Stored]] = []
        hashes: list[int] = []
        sums = array("I")
        nbytes = 0
        for item in inputs.stream():  # per input: this loop is a changed rerun's cost
            key, value = item
            items.append(item)
            hashes.append(hash(key))  # a str caches it: the ledger's sets and dicts reuse it
            if value.data is not None:
                nbytes += value.size
            n = len(items)
            sums.append(crc32(key.encode()))  # crc(key), inline
            if ((n >= SMALLEST and sums[-1] & mask == 0) or n >= LARGEST
                    or nbytes >= MOST_BYTES):
                break
        if not items:
            return
        keys = [key for key, _ in items]
        yield Block(block_key(keys[0], len(items)), items,
                    digest_of(keys, [v.digest or "" for _, v in items]), hashes, inputs.seal(),
                    sums.tobytes())
