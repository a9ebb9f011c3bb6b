"""Items and their keys.

Every value that flows through a pipeline has a key: the name the ledger,
resume, failures and the report use for it. An input's key is the value itself
when it is a string (a path is its own key), the key given with
``Item(key, value)``, or else a stable digest of the value. A child yielded by
a fan-out stage is keyed ``parent/0``, ``parent/1``, ... unless it is yielded
as an ``Item``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, NamedTuple

from . import codec
from .errors import InputError

if TYPE_CHECKING:
    from .store import Stored

BLOCK_MARK = "\x1e"  # starts the key of a ledger row that holds a block of items



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


def input_items(inputs: Iterable[Any], put: Callable[[bytes, str], Stored]
                ) -> Iterator[tuple[str, Stored]]:
    """(key, value kept by ``put``) for each input, lazily; raises :class:`InputError`.

    This loop is a rerun's cost per input (a million inputs: a few seconds), so
    it is one generator and checks keys inline.
    """
    encode, digest = codec.encode, codec.digest
    for position, raw in enumerate(inputs):
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
