"""Items and their keys.

Every value that flows through a pipeline has a key: the name the ledger,
resume, failures and the report use for it. An input's key is the value itself
when it is a string (a path is its own key), the key given with
``Item(key, value)``, or else a stable digest of the value. A child yielded by
a fan-out stage is keyed ``parent/0``, ``parent/1``, ... unless it is yielded
as an ``Item``.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, NamedTuple

from . import codec
from .errors import InputError, RunInterrupted

if TYPE_CHECKING:
    from .store import Stored

BLOCK_MARK = "\x1e"  # starts the key of a ledger row that holds a block of items
TAKING_SECONDS = 1.0  # how often inputs being taken in say how many have been read



class Item(NamedTuple):
    """A value with an explicit key."""

    key: str
    value: Any


class Listing:
    """Inputs listed from places given whole (a folder, a prefix), lazily: ``roots`` are
    those places' keys. An input a run directory holds under a root (the root itself or
    ``root/...``) that the listing no longer has is gone, not merely left out: a rerun
    drops it with everything derived from it, where an input not given is kept."""

    def __init__(self, items: Iterable[Any], roots: Iterable[str] = ()) -> None:
        self.items, self.roots = items, tuple(roots)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)

    def covers(self, key: str) -> bool:
        """Whether ``key`` lies under one of the roots, so its listing would name it."""
        return any(key == root or key.startswith(root.rstrip("/") + "/")
                   for root in self.roots)


def check_key(key: Any) -> str:
    """``key`` if it is a usable key, else a ``ValueError`` saying why."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"an item key must be a non-empty string, got {key!r}")
    if key.startswith(BLOCK_MARK):
        raise ValueError(f"an item key must not start with \\x1e (conveyor's mark for "
                         f"blocks of items), got {key!r}")
    return key


class Inputs:
    """A run's inputs as given, taken in as (key, value kept by ``put``).

    Iterated, it yields each input's key and stored value, raising
    :class:`InputError` for one that cannot be an input and
    :class:`RunInterrupted` when ``interrupted`` names a signal (asked at each
    input: a slow iterable of inputs can be stopped). That loop costs a few
    microseconds an input in Python, a rerun's whole cost at a million inputs,
    so a ledger that takes inputs in blocks (:func:`conveyor.ledger.blocks.cut`)
    also uses the block methods: :meth:`stream` keeps each input as given, for
    :meth:`seal` to digest a block's inputs in one encoding (:func:`raw_digest`);
    :meth:`skip` takes a block's inputs unlooked-at when that digest is the one
    the ledger holds for the block. A stream ends where :meth:`skip`,
    :meth:`ahead` or :meth:`next_key` begins.

    ``put`` None: ``given`` are (key, stored value) pairs already (a service's
    requests, a ledger's own items), taken as they are, with no raw digest.
    ``taking``, if given, is told how many inputs have been read from ``given``
    about once a second while they are (a long listing of a bucket shows progress).
    """

    def __init__(self, given: Iterable[Any], put: Callable[[bytes, str], Stored] | None = None,
                 interrupted: Callable[[], str | None] | None = None,
                 taking: Callable[[int], None] | None = None) -> None:
        self._given = iter(given) if taking is None else _reporting(iter(given), taking)
        self._ahead: Iterator[Any] = iter(())  # inputs read ahead and given back: first
        self._put = put
        self._interrupted = interrupted or _never
        self._raws: list[Any] = []  # the inputs streamed since the last seal
        self._taken = 0  # inputs taken before them (an error names an input's position)

    def __iter__(self) -> Iterator[tuple[str, Stored]]:
        return self._take(self._taken, None)

    def stream(self) -> Iterator[tuple[str, Stored]]:
        """The inputs from here, each kept as given for :meth:`seal`."""
        return self._take(self._taken + len(self._raws), self._raws.append)

    def seal(self) -> str | None:
        """The raw digest of the inputs streamed since the last seal (a block's)."""
        raws, self._raws = self._raws, []
        self._taken += len(raws)
        return raw_digest(raws) if self._put is not None else None

    def ahead(self, n: int) -> int:
        """How many inputs are left, counting up to ``n`` (read ahead, not taken)."""
        chunk = self._read(n)
        self._give_back(chunk)
        return len(chunk)

    def next_key(self) -> str | None:
        """The next input's key, not taking it; None at the end, for an input that is
        none, or for pairs (which are never skipped)."""
        chunk = self._read(1)
        self._give_back(chunk)
        if not chunk or self._put is None:
            return None
        try:  # keyed as it will be taken, its value kept nowhere
            return next(iter(Inputs(chunk, _unkept)))[0]
        except InputError:
            return None

    def skip(self, n: int, raw: str) -> bool:
        """Take the next ``n`` inputs unlooked-at if their raw digest is ``raw``."""
        chunk = self._read(n)
        if len(chunk) == n and self._put is not None and raw_digest(chunk) == raw:
            self._taken += n
            return True
        self._give_back(chunk)
        return False

    def _read(self, n: int) -> list[Any]:
        chunk: list[Any] = []
        append, interrupted = chunk.append, self._interrupted
        for raw in itertools.islice(itertools.chain(self._ahead, self._given), n):
            append(raw)
            if interrupted() is not None:  # at each input: a slow iterable can be stopped
                self._check()
        return chunk

    def _give_back(self, chunk: list[Any]) -> None:
        self._ahead = iter(chunk + list(self._ahead))

    def _check(self) -> None:
        why = self._interrupted()
        if why is not None:
            raise RunInterrupted(f"interrupted by {why} while reading inputs; nothing was "
                                 f"recorded")

    def _take(self, start: int, keep: Callable[[Any], None] | None
              ) -> Iterator[tuple[str, Stored]]:
        source = itertools.chain(self._ahead, self._given)
        if self._put is None:
            for pair in source:
                if keep is not None:
                    keep(pair)
                yield pair
            return
        encode, digest, put, check = codec.encode, codec.digest, self._put, self._check
        for position, raw in enumerate(source, start):  # per input: kept lean
            if keep is not None:
                keep(raw)
            check()
            if isinstance(raw, Item):
                key, value = raw
            else:
                key, value = None, raw
            try:
                data = encode(value)
            except codec.EncodeError as exc:
                raise InputError(f"input #{position} is not JSON-serialisable: {exc}") from None
            dig = digest(data)
            if key is None:
                key = value if type(value) is str else dig[:16]
            if type(key) is not str or not key or key[0] == BLOCK_MARK:  # check_key's cases
                try:
                    check_key(key)
                except ValueError as exc:
                    raise InputError(f"input #{position}: {exc}") from None
            yield key, put(data, dig)


def _reporting(given: Iterator[Any], taking: Callable[[int], None]) -> Iterator[Any]:
    """``given`` as it is, calling ``taking`` with how many it has yielded every
    :data:`TAKING_SECONDS` or so (the clock is read every 64 inputs: this loop is a
    rerun's, about 45 ns an input; a source that blocks reports when it yields again)."""
    monotonic = time.monotonic
    due = monotonic() + TAKING_SECONDS
    for n, raw in enumerate(given, 1):
        yield raw
        if not n & 63 and monotonic() >= due:
            taking(n)
            due = monotonic() + TAKING_SECONDS


# Types of bare inputs whose encoding fixes their key: a str, its own key, is the only
# one written as a JSON string; the others are keyed by their value's digest
_PLAIN = frozenset({str, int, float, bool, type(None), list, tuple, dict})


def raw_digest(raws: list[Any]) -> str | None:
    """One digest of inputs as given that fixes all their keys and values (one encoding
    of the whole list, in C), or None where it would not: inputs of a type written
    as a JSON string but keyed by digest (a str subclass, a datetime), a key of an
    ``Item`` that is not a str, or items mixed with bare values."""
    types = set(map(type, raws))
    if types <= _PLAIN:
        form, whole = b"v", raws
    elif types == {Item}:
        keys = [raw[0] for raw in raws]
        if set(map(type, keys)) != {str}:
            return None
        form, whole = b"i", [keys, [raw[1] for raw in raws]]
    else:
        return None
    try:
        return codec.digest(form + codec.encode(whole))
    except codec.EncodeError:
        return None


def _never() -> None:
    return None


def _unkept(data: bytes, digest: str) -> Any:
    return None
