"""Typed stages: annotations that pydantic can validate are checked at every boundary.

When a stage's value parameter or its return is annotated with a type
pydantic can validate (a pydantic model, a dataclass, ``list[int]``,
``dict[str, float]``, ``str`` ...), the value crossing that boundary is
validated: the input is converted (a dict becomes the model the stage asked
for) before the call, and the output is checked before it is stored or
routed anywhere (a value yielded as ``conveyor.Item(key, value)`` is not:
``Item`` says nothing about the value). A value that does not fit fails the item at that stage with
pydantic's message, without retries (the same value would fail again) and
before any downstream or GPU work is spent on it. Annotations pydantic cannot
build a validator for (arbitrary classes, ``Any``, none at all) are not checked.

Batch stages are annotated with lists (``list[Review]``) and validated item
by item; generators with ``Iterator[T]`` (each yielded value is a ``T``);
reduces with ``Iterable[T]`` (each gathered value is a ``T``).
"""

from __future__ import annotations

import collections.abc
import inspect
import typing
from dataclasses import dataclass
from typing import Any

from .items import Item

_CONTAINERS = (list, collections.abc.Iterator, collections.abc.Iterable,
               collections.abc.Generator, collections.abc.Sequence)


class ValidationFailed(Exception):
    """A value did not fit a stage's annotation (the message is pydantic's)."""


@dataclass(frozen=True)
class Boundary:
    """Validators for what a stage takes and returns (either may be None: unchecked)."""

    takes: Any = None  # a pydantic TypeAdapter
    returns: Any = None

    def check_input(self, stage: str, value: Any) -> Any:
        if self.takes is None:
            return value
        return _validate(self.takes, value, f"stage {stage!r} got an invalid input")

    def check_output(self, stage: str, value: Any) -> Any:
        if self.returns is None:
            return value
        return _validate(self.returns, value, f"stage {stage!r} returned an invalid output")

    @property
    def input_schema(self) -> dict[str, Any] | None:
        return self.takes.json_schema() if self.takes is not None else None

    @property
    def output_schema(self) -> dict[str, Any] | None:
        return self.returns.json_schema() if self.returns is not None else None


def _validate(adapter: Any, value: Any, what: str) -> Any:
    import pydantic

    try:
        return adapter.validate_python(value)
    except pydantic.ValidationError as exc:
        raise ValidationFailed(f"{what}: {exc}") from None


def annotations(call: Any, is_class: bool) -> tuple[Any, Any]:
    """The (value parameter, return) annotations of a stage's callable, resolved.

    Resolved where the stage is declared, with the module's globals at hand:
    a worker may not have them (a function pickled by value keeps only the
    globals its code uses). (None, None) where they cannot be resolved.
    """
    try:
        hints = typing.get_type_hints(call)
        params = [p for p in inspect.signature(call).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except Exception:  # unresolvable forward references, builtins: nothing is checked
        return None, None
    if is_class and params:
        params = params[1:]
    return (hints.get(params[0].name) if params else None), hints.get("return")


def value_types(stage: Any) -> tuple[Any, Any]:
    """The annotations of one value going into and coming out of ``stage``.

    A batch stage's ``list[T]`` and a reduce's ``Iterable[T]`` take ``T`` each;
    a batch stage's ``list[T]`` and a generator's ``Iterator[T]`` give ``T`` each.
    None where nothing is annotated (or not in a form we can look into).
    """
    takes, returns = stage.annotations
    if stage.batch_size or stage.reduce:
        takes = _element(takes)
    if stage.batch_size or stage.is_generator:
        returns = _element(returns)
    return takes, returns


def boundary(stage: Any) -> Boundary:
    """The validators ``stage``'s resolved annotations ask for."""
    takes, returns = value_types(stage)
    return Boundary(_adapter(takes), _adapter(returns))


def _element(annotation: Any) -> Any:
    """``T`` of ``list[T]``, ``Iterator[T]``, ``Iterable[T]``, ``Generator[T, ...]``."""
    if annotation is None:
        return None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in _CONTAINERS and args:
        return args[0]
    return None  # not a container we know how to look into: unchecked


def _adapter(annotation: Any) -> Any:
    if annotation is None or annotation is Any or annotation is inspect.Parameter.empty:
        return None
    if annotation is Item:  # keyed values: the key is conveyor's, the value is unannotated
        return None
    try:
        import pydantic

        return pydantic.TypeAdapter(annotation)
    except Exception:  # pydantic cannot validate this type: leave it unchecked
        return None
