"""Executors: where stage code runs. ``local`` (processes) by default, ``inline`` to debug,
``ray`` for a Ray cluster (imported only when chosen: ``import conveyor`` never imports Ray)."""

from __future__ import annotations

from ..errors import ExecutorUnavailable
from ..resources import Budget
from .base import Event, Executor, Exited, Ready, Results, SetupFailed
from .inline import InlineExecutor
from .local import LocalExecutor

EXECUTORS = ("local", "inline", "ray")


def make_executor(name: str | Executor, address: str | None = None,
                  budget: Budget | None = None) -> Executor:
    """An executor by name (an :class:`Executor` instance is passed through).

    ``address`` is the Ray cluster to join (``ray`` only; None starts a local
    Ray instance sized to ``budget``, default this machine's).

    Raises:
        ExecutorUnavailable: an unknown name, an address for another executor,
            or ``ray`` without Ray installed.
    """
    if isinstance(name, Executor):
        return name
    if address is not None and name != "ray":
        raise ExecutorUnavailable(f"an address is for the ray executor, not {name!r}")
    if name == "ray":
        from .ray import RayExecutor  # imports Ray: only when chosen

        return RayExecutor(address, budget)
    if name == "local":
        return LocalExecutor()
    if name == "inline":
        return InlineExecutor()
    raise ExecutorUnavailable(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")


__all__ = ["Event", "Executor", "Exited", "Ready", "Results", "SetupFailed", "make_executor"]
