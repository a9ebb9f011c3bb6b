"""How values cross process and environment boundaries: JSON bytes.

Every value a stage takes or returns is encoded here, once, in the process
that produced it. JSON keeps values readable in the run directory and lets a
stage in another Python environment read them without the driver's classes.
orjson is used for speed; NumPy arrays and scalars, dataclasses and pydantic
models are converted to plain JSON on the way.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class EncodeError(TypeError):
    """A value cannot be represented as JSON."""


def _default(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)  # pydantic models
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, (set, frozenset)):
        raise TypeError(f"a {type(value).__name__} is not JSON; return a sorted list")
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError("bytes are not JSON; write large payloads to ctx.output_dir "
                        "and return the path")
    item = getattr(value, "item", None)  # NumPy scalar types orjson does not know
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    tolist = getattr(value, "tolist", None)  # NumPy arrays orjson does not take: views
    if callable(tolist) and type(value).__module__ == "numpy":  # (transposed, strided)
        return tolist()
    raise TypeError(f"a {type(value).__module__}.{type(value).__qualname__} is not JSON")


def encode(value: Any) -> bytes:
    """JSON bytes of ``value``; raises :class:`EncodeError` saying what is wrong."""
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise EncodeError(str(exc)) from None


def decode(data: bytes) -> Any:
    """The value back from :func:`encode`'s bytes."""
    return orjson.loads(data)


def digest(data: bytes) -> str:
    """A short, stable content digest (hex) of encoded bytes."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()
