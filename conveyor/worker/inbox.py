"""A worker's inbox: tasks with their inputs decoded (and a class stage's ``load()``
run) ahead of the stage's calls, bounded in count and bytes. Filled by a loader
thread and emptied by the thread that calls the stage, in a local worker process
(:mod:`conveyor.worker.process`) and in a Ray actor (:mod:`conveyor.worker.actor`).
"""

from __future__ import annotations

import collections
import queue
import threading
from typing import Any

from ..ledger.base import Claim

PREFETCH_BYTES = 256 * 2**20  # decoded inputs held ahead of the stage, at most
PREFETCH_ITEMS = 64  # ... and at most this many (or two batches)


class Inbox:
    """Decoded tasks waiting for the thread that calls the stage, bounded in count and bytes.

    One item always fits, however large, so a single huge input still runs.
    """

    @classmethod
    def ahead_of(cls, runner: Any) -> "Inbox":
        """The inbox of a worker of ``runner``'s group: a stage with ``load()`` gets its
        ``prefetch`` batches ahead, no more (loaded values such as decoded images can
        be large); others PREFETCH_ITEMS decoded inputs, or two batches."""
        ahead = runner.prefetch if runner.loads else max(PREFETCH_ITEMS, 2 * runner.batch_size)
        return cls(ahead, PREFETCH_BYTES)

    def __init__(self, items: int, nbytes: int) -> None:
        self.items, self.nbytes = items, nbytes
        self._queue: collections.deque[tuple[Any, int]] = collections.deque()
        self._held = 0
        self._cond = threading.Condition()

    def load(self, runner: Any, task: Claim) -> None:
        """Decode ``task``'s input and run the stage's ``load()`` on it, into the inbox.
        A stage with ``load()`` waits for room first: what is loaded ahead, the value
        in hand included, stays within its ``prefetch``."""
        if runner.loads:
            self.wait_room()
        loaded = runner.load(task)
        self.put(loaded, loaded.size)

    def put(self, item: Any, size: int = 0) -> None:
        with self._cond:
            while self._queue and (len(self._queue) >= self.items
                                   or self._held + size > self.nbytes):
                self._cond.wait()
            self._queue.append((item, size))
            self._held += size
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Any:
        with self._cond:
            if not self._cond.wait_for(lambda: self._queue, timeout):
                raise queue.Empty
            item, size = self._queue.popleft()
            self._held -= size
            self._cond.notify_all()
            return item

    def wait_room(self) -> None:
        """Wait until one more item fits by count: called before loading it, so what is
        loaded ahead never exceeds the bound, the item in the loader's hands included."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._queue) < self.items)

    def get_nowait(self) -> Any:
        return self.get(timeout=0)

    def empty(self) -> bool:
        with self._cond:
            return not self._queue
