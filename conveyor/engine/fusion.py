"""Fusing stages: a linear chain of compatible stages runs in one worker.

When ``b`` is the only stage after ``a`` and ``a`` the only stage before
``b``, and both declare the same resources, environment variables, Python
environment and concurrency, are not batched, not reduces or groups, have no
timeout, and ``b`` reads no side inputs and has no ``load()`` (a stage that
loads its inputs heads its own group, so its worker's prefetch thread runs
that ahead of the calls), the two form one *group*: a
worker of the group takes an item at ``a`` and carries each output straight
into ``b`` in the same process. Nothing is lost by it (each stage and item
still gets its own ledger row, outputs, retries and failures) while the
per-stage costs of a hop (a claim, a message each way, a queue) disappear,
and the CPU a chain needs is shared by its stages as their costs demand,
without the scheduler having to split it.

The scheduler, the dispatcher and the workers deal in groups; a stage that
fuses with nothing is a group of one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..pipeline import Pipeline
    from ..stage import Stage


@dataclass(frozen=True)
class Group:
    """Stages that share workers, in chain order; ``name`` joins theirs with ``+``."""

    stages: tuple[str, ...]

    @property
    def name(self) -> str:
        return "+".join(self.stages)

    @property
    def head(self) -> str:
        return self.stages[0]

    @property
    def tail(self) -> str:
        return self.stages[-1]


def _compatible(a: "Stage", b: "Stage") -> bool:
    return (not a.barrier and not b.barrier and not b.side and not b.loads
            and a.batch_size is None and b.batch_size is None
            and a.timeout is None and b.timeout is None
            and a.resources == b.resources and dict(a.env) == dict(b.env)
            and a.concurrency == b.concurrency and a.min_workers == b.min_workers
            and a.idle_timeout == b.idle_timeout
            and a.requirements == b.requirements and a.python == b.python)


def fuse(pipeline: "Pipeline") -> list[Group]:
    """The pipeline's groups, in graph order (each group after its upstreams)."""
    groups: list[list[str]] = []
    group_of: dict[str, list[str]] = {}
    for name in pipeline.order():
        stage = pipeline[name]
        if len(stage.upstream) == 1:
            (up,) = stage.upstream
            if (len(pipeline.downstream(up)) == 1 and group_of[up][-1] == up
                    and _compatible(pipeline[up], stage)):
                group_of[up].append(name)
                group_of[name] = group_of[up]
                continue
        group_of[name] = [name]
        groups.append(group_of[name])
    return [Group(tuple(g)) for g in groups]
