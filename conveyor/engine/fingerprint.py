"""Stage fingerprints: what decides whether a finished stage can be reused.

A stage's fingerprint hashes its own source (the function, or the whole
class), its parameters (default argument values, and the values it closes
over when they are plain data: a threshold, a model name), its ``when=``
predicate, its ``version=``, the options that change what it computes (being
a reduce; a group's key function and partitions; the stages it reads as side
inputs; batch size does not), its Python environment (``requirements``,
``python``), and the fingerprints of its upstream stages. What the side
stages hold when it runs is checked then (see :mod:`conveyor.engine.barriers`).
Editing a stage therefore recomputes it and every stage below it, and
nothing above. Code the stage calls into (helpers, other modules, model
files) is not hashed: bump ``version=`` when it changes.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import types
from typing import TYPE_CHECKING, Any

from ..envs import identity

if TYPE_CHECKING:
    from ..pipeline import Pipeline
    from ..stage import Stage


def _code_digest(code: types.CodeType, h: "hashlib._Hash") -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_digest(const, h)
        else:
            h.update(repr(const).encode())


def source_digest(obj: Any) -> str:
    """A digest of ``obj``'s code: its source text, or its bytecode for lambdas."""
    h = hashlib.blake2b(digest_size=16)
    code = getattr(obj, "__code__", None)
    if getattr(obj, "__name__", "") == "<lambda>" and code is not None:
        # A lambda's source is the whole statement around it; hash the lambda alone.
        _code_digest(code, h)
        return h.hexdigest()
    try:
        h.update(inspect.getsource(obj).encode())
    except (OSError, TypeError):
        if code is None:
            code = getattr(getattr(obj, "__call__", None), "__code__", None)
        if code is None:
            h.update(repr(obj).encode())
        else:
            _code_digest(code, h)
    return h.hexdigest()


def parameters(fn: Any) -> str:
    """The plain-data parameters a function carries: defaults and closed-over values.

    Values that are not plain data (objects, functions, loggers) are left out:
    their text changes from run to run and would recompute everything.
    """
    fn = getattr(fn, "__call__", fn) if inspect.isclass(fn) else fn
    found: dict[str, Any] = {}
    defaults = getattr(fn, "__defaults__", None)
    if defaults:
        found["defaults"] = [d for d in defaults if _plain(d)]
    kwdefaults = getattr(fn, "__kwdefaults__", None)
    if kwdefaults:
        found["kwdefaults"] = {k: v for k, v in sorted(kwdefaults.items()) if _plain(v)}
    code, cells = getattr(fn, "__code__", None), getattr(fn, "__closure__", None)
    if code is not None and cells:
        closed = {}
        for name, cell in zip(code.co_freevars, cells):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if _plain(value):
                closed[name] = value
        found["closure"] = closed
    return json.dumps(found, sort_keys=True, default=str)


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def stage_fingerprint(stage: "Stage", upstream: list[str]) -> str:
    """The fingerprint of ``stage`` given its upstreams' fingerprints."""
    h = hashlib.blake2b(digest_size=16)
    for part in (stage.name, source_digest(stage.target), parameters(stage.target),
                 source_digest(stage.when) if stage.when is not None else "",
                 parameters(stage.when) if stage.when is not None else "",
                 stage.version or "", "reduce" if stage.reduce else "map", *upstream):
        h.update(part.encode())
        h.update(b"\0")
    # Each only when declared, so fingerprints of stages without it stay as they were.
    env = identity(stage)
    if env:
        h.update(b"env\0" + env.encode())
    if stage.group:
        h.update(f"group\0{source_digest(stage.by)}\0{parameters(stage.by)}\0"
                 f"{stage.partitions}".encode())
    if stage.side:  # what the side stages hold is checked when the stage opens to run
        h.update(("side\0" + "\0".join(stage.side)).encode())
    return h.hexdigest()


def fingerprints(pipeline: "Pipeline") -> dict[str, str]:
    """Every stage's fingerprint, computed in graph order."""
    result: dict[str, str] = {}
    for name in pipeline.order():
        stage = pipeline[name]
        result[name] = stage_fingerprint(stage, sorted(result[u] for u in stage.upstream))
    return result
