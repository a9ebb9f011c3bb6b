"""A stage as declared: the user's code, its place in the graph, its options, and the
checks on those options (:func:`check_stage`). :mod:`conveyor.pipeline` builds
the graph of them; the engine and the workers read them.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .errors import StageDefinitionError
from .resources import Resources


@dataclass(frozen=True)
class Stage:
    """One declared stage: the user's code, its place in the graph and its resources."""

    name: str
    target: Callable[..., Any]
    upstream: tuple[str, ...] = ()
    when: Callable[[Any], bool] | None = None
    resources: Resources = field(default_factory=Resources)
    concurrency: int | None = None
    batch_size: int | None = None
    retries: int = 0
    retry_backoff: float = 1.0
    timeout: float | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    version: str | None = None
    reduce: bool = False
    by: Callable[[Any], Any] | None = None  # a group stage's key function
    partitions: int = 0  # a group stage's partitions
    side: tuple[str, ...] = ()  # stages it reads while it runs (ctx.side), finished first
    min_workers: int = 0
    idle_timeout: float | None = None
    batch_wait: float = 0.05
    prefetch: int = 2  # batches a class stage's load() runs ahead of its calls
    requirements: tuple[str, ...] = ()  # normalised pip lines (conveyor.envs); (): the driver's
    python: str | None = None  # the interpreter its workers run under (None: the driver's)
    # (value parameter, return) annotations, resolved where declared (see validation.py)
    annotations: tuple[Any, Any] = (None, None)

    @property
    def is_class(self) -> bool:
        return inspect.isclass(self.target)

    @property
    def call(self) -> Callable[..., Any]:
        """The function whose signature matters: the target or its ``__call__``."""
        return self.target.__call__ if self.is_class else self.target  # type: ignore[operator]

    @property
    def group(self) -> bool:
        """Whether this is a group stage (:meth:`Pipeline.group`)."""
        return self.by is not None

    @property
    def barrier(self) -> bool:
        """Whether it runs only once everything above it is finished (a reduce, a group)."""
        return self.reduce or self.group

    @property
    def takes_ctx(self) -> bool:
        """Whether the stage's callable takes the context after its value (a group's:
        after its key and values)."""
        needed = 3 if self.group else 2
        return positional_count(self.call, skip_self=self.is_class) >= needed

    @property
    def is_generator(self) -> bool:
        return inspect.isgeneratorfunction(self.call)

    @property
    def loads(self) -> bool:
        """Whether it is a class stage with a ``load(self, value)`` hook, run ahead of calls."""
        return self.is_class and callable(getattr(self.target, "load", None))


def group_of(by: Callable[[Any], Any], partitions: int, value: Any) -> tuple[str, int]:
    """A value's group key (``by(value)``; an int becomes its string) and its partition,
    by a hash of the key that is the same in every process and on every run."""
    key = by(value)
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise TypeError(f"a group key must be a str or an int, got {type(key).__name__}")
    key = str(key)
    hashed = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
    return key, hashed % partitions


@dataclass(frozen=True)
class Route:
    """An edge as a worker sees it: where outputs may go and on what condition."""

    stage: str
    when: Callable[[Any], bool] | None
    reduce: bool
    by: Callable[[Any], Any] | None = None  # a group's key function
    partitions: int = 0


def positional_count(fn: Callable[..., Any], skip_self: bool) -> int:
    params = list(inspect.signature(fn).parameters.values())
    if skip_self and params:
        params = params[1:]
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 2
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def check_stage(stage: Stage) -> None:
    """Options that cannot work, named with the stage."""
    def bad(msg: str) -> StageDefinitionError:
        return StageDefinitionError(f"stage {stage.name!r}: {msg}")

    if stage.is_class and not callable(getattr(stage.target, "__call__", None)):
        raise bad("a class stage needs a __call__ method")
    try:
        count = positional_count(stage.call, skip_self=stage.is_class)
    except (TypeError, ValueError):
        count = 1  # builtins without a signature take one argument
    if count < 1:
        raise bad("its callable must take the value (and optionally ctx) as arguments")
    if stage.reduce and not stage.upstream:
        raise bad("a reduce needs after= (it reduces the outputs of other stages)")
    if stage.group:
        if not stage.upstream:
            raise bad("a group needs after= (it groups the outputs of other stages)")
        if not isinstance(stage.partitions, int) or stage.partitions < 1:
            raise bad(f"partitions must be a positive integer, got {stage.partitions!r}")
        if count < 2:
            raise bad("a group's callable takes the key and an iterator of its values "
                      "(and optionally ctx)")
    if stage.name in stage.side:
        raise bad("a stage cannot read itself as a side input")
    if stage.when is not None and not stage.upstream:
        raise bad("when= routes an upstream's outputs; the first stage has no upstream")
    if stage.when is not None and not callable(stage.when):
        raise bad("when= must be a callable taking the upstream value")
    if stage.batch_size is not None:
        if stage.reduce:
            raise bad("a reduce takes all values at once; batch_size does not apply")
        if not isinstance(stage.batch_size, int) or stage.batch_size < 1:
            raise bad(f"batch_size must be a positive integer, got {stage.batch_size!r}")
        if stage.is_generator:
            raise bad("a batch stage returns one output per input; it cannot be a generator")
    if stage.concurrency is not None and (not isinstance(stage.concurrency, int)
                                          or stage.concurrency < 1):
        raise bad(f"concurrency must be a positive integer, got {stage.concurrency!r}")
    if not isinstance(stage.min_workers, int) or stage.min_workers < 0:
        raise bad(f"min_workers must be a non-negative integer, got {stage.min_workers!r}")
    if stage.concurrency is not None and stage.min_workers > stage.concurrency:
        raise bad(f"min_workers={stage.min_workers} is more than concurrency="
                  f"{stage.concurrency}")
    if stage.idle_timeout is not None and stage.idle_timeout <= 0:
        raise bad(f"idle_timeout must be > 0 seconds, got {stage.idle_timeout!r}")
    if stage.batch_wait < 0:
        raise bad(f"batch_wait must be >= 0 seconds, got {stage.batch_wait!r}")
    if isinstance(stage.prefetch, bool) or not isinstance(stage.prefetch, int) \
            or stage.prefetch < 1:
        raise bad(f"prefetch must be a positive integer, got {stage.prefetch!r}")
    if stage.loads:
        if stage.barrier:
            raise bad("load() prefetches item inputs; a reduce or a group reads its values "
                      "when it is called, so it cannot have one")
        try:
            takes = positional_count(stage.target.load, skip_self=True)
        except (TypeError, ValueError):
            takes = 1
        if takes < 1:
            raise bad("load(self, value) takes one input value and returns what __call__ "
                      "gets; this load takes no value")
    if not isinstance(stage.retries, int) or stage.retries < 0:
        raise bad(f"retries must be a non-negative integer, got {stage.retries!r}")
    if stage.retry_backoff < 0:
        raise bad(f"retry_backoff must be >= 0, got {stage.retry_backoff!r}")
    if stage.timeout is not None and stage.timeout <= 0:
        raise bad(f"timeout must be > 0 seconds, got {stage.timeout!r}")
    for k, v in dict(stage.env).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise bad(f"env must map strings to strings, got {k!r}: {v!r}")
