"""Backpressure: how full each stage's queue is, and how much more a group may take.

A queue's fill is measured in time, not items: full is QUEUE_SECONDS of its
stage's work at the speed the stage has shown (at least two windows, at most
QUEUE_LIMIT items). The scheduler reads it both ways (:mod:`.scheduler`): a
group's input fill (how urgent it is) and the fill of the fullest queue below
it (whether its output is piling up). Dispatch reads a group's room: it takes
no more work once a downstream queue holds QUEUE_LIMIT items, counting what it
already has in flight, since each of those will land downstream too.

A queue that fills while its stage waits, a barrier's or one behind side
inputs not yet ready (:mod:`.barriers`), throttles nothing above it: what is
above must finish for it to open.
"""

from __future__ import annotations

from .barriers import Barriers
from .state import GroupState, StageState

QUEUE_LIMIT = 1000  # pending items a stage may hold before its upstreams are throttled
QUEUE_SECONDS = 2.0  # a queue holding this much of its stage's work counts as full


class Backpressure:
    """The queue pressure of a run's stages and groups, read from the engine's counters."""

    def __init__(self, stages: dict[str, StageState], groups: dict[str, GroupState],
                 barriers: Barriers) -> None:
        self.stages = stages
        self.groups = groups
        self.barriers = barriers

    def fill(self, state: StageState) -> float:
        """How full a stage's queue is, 0..1, measured in time: full is QUEUE_SECONDS of its
        work (at least two windows, at most QUEUE_LIMIT items)."""
        group = self.groups[state.group]
        full = QUEUE_LIMIT / 4 if state.service is None else QUEUE_SECONDS / state.service
        full = min(QUEUE_LIMIT, max(full, 2 * group.window))
        return min(1.0, state.pending / full)

    def out_fill(self, group: GroupState) -> float:
        """How full the fullest queue below the group is, 0..1."""
        return max((self.fill(self.stages[d]) for d in group.members[-1].downstream
                    if not self.barriers.waiting(d)), default=0.0)

    def room(self, group: GroupState) -> int:
        """How many more items the group may take before its downstream queues are full.

        Items in flight count against the room: each will land downstream. A group
        that runs blocks has four windows in flight at least (each window a few
        blocks of hundreds of items), so that its workers are never out of work.
        """
        queued = [self.stages[d].pending for d in group.members[-1].downstream
                  if not self.barriers.waiting(d)]
        limit = max(QUEUE_LIMIT, 4 * group.window) if group.runs_blocks else QUEUE_LIMIT
        return limit - max(queued, default=0) - group.running

    def fed(self, group: GroupState) -> bool:
        """Whether work may still arrive: something above the group is pending or running."""
        head = group.members[0]
        return any(self.stages[a].pending or self.stages[a].running for a in head.ancestors)
