"""Executors: where stage code runs. ``local`` (processes) by default, ``inline`` to debug."""

from __future__ import annotations

from ..errors import ExecutorUnavailable
from .base import Event, Executor, Exited, Ready, Results, SetupFailed

EXECUTORS = ("local", "inline")


def make_executor(name: str | Executor) -> Executor:
    """An executor by name (an :class:`Executor` instance is passed through)."""
    if isinstance(name, Executor):
        return name
    if name == "local":
        from .local import LocalExecutor

        return LocalExecutor()
    if name == "inline":
        from .inline import InlineExecutor

        return InlineExecutor()
    raise ExecutorUnavailable(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")


__all__ = ["Event", "Executor", "Exited", "Ready", "Results", "SetupFailed", "make_executor"]
