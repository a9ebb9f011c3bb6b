"""The context a stage sees: which item, which attempt, where to put files.

A stage receives it as an optional second argument, or calls
:func:`conveyor.context` from anywhere inside the call.
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .resources import Resources

if TYPE_CHECKING:
    from .store import Store
    from .worker.sides import Sides

_current: contextvars.ContextVar["Context"] = contextvars.ContextVar("conveyor_context")


@dataclass
class Context:
    """What a stage call knows about itself.

    Attributes:
        stage: the stage's name.
        keys: the keys of the values in this call (one, or a batch's).
        attempt: 1 for the first try, 2 for the first retry, ...
        resources: what the stage declared (threads, cpus, ram, gpus).
        logger: a logger named ``conveyor.stage.<name>``.
    """

    stage: str
    keys: list[str]
    attempt: int
    resources: Resources
    store: "Store" = field(repr=False)
    logger: logging.Logger = field(repr=False)
    sides: "Sides | None" = field(default=None, repr=False)

    @property
    def key(self) -> str:
        """The item's key; a batch call has several, see :attr:`keys`."""
        if len(self.keys) != 1:
            raise AttributeError(f"stage {self.stage!r} is called with a batch of "
                                 f"{len(self.keys)} items; use ctx.keys")
        return self.keys[0]

    @property
    def output_dir(self) -> Path:
        """A folder of this item's own for large artifacts; return paths into it."""
        return self.store.item_dir(self.stage, self.key)

    def item_dir(self, key: str) -> Path:
        """The artifact folder of one key of a batch."""
        return self.store.item_dir(self.stage, key)

    def side(self, name: str) -> Any:
        """Stage ``name``, declared in ``side=[...]``, as this stage reads it: a
        reduce's value, or a read-only mapping key -> output of any other stage."""
        if self.sides is None:
            raise KeyError(f"stage {self.stage!r} reads no side inputs; declare them with "
                           f"side=[...]")
        return self.sides.get(self.stage, name)


def context() -> Context:
    """The context of the stage call in progress; raises outside of one."""
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("conveyor.context() is only available inside a stage call") from None


def activate(ctx: Context) -> contextvars.Token["Context"]:
    """Make ``ctx`` the current context; pass the token to :func:`deactivate`."""
    return _current.set(ctx)


def deactivate(token: contextvars.Token["Context"]) -> None:
    _current.reset(token)
