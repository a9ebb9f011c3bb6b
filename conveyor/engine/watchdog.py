"""The watchdog: kills workers whose current task ran too long or whose memory grew too large.

A stuck or runaway item must not hold a worker (and its CPUs, RAM, GPU)
forever, and it must not take the machine down with it. Each loop turn the
driver asks :class:`Watchdog` to look; it

* kills a worker whose task at the head of its queue has run past the
  stage's ``timeout``: the reason recorded is "timed out after 30 s";
* every ``RSS_SECONDS``, measures each worker's resident memory (with its
  child processes, which native tools often are) and kills one that is past
  the stage's declared ``ram``: "exceeded ram 2 GiB (rss 2.3 GiB)".

Killing is the executor's job; what happens to the item is the driver's (its
attempt fails with that reason and is retried under the stage's rules).
Executors whose workers cannot be killed from here (inline) are not watched.
"""

from __future__ import annotations

from typing import Callable

import psutil

from ..executors.base import Executor
from ..resources import format_size
from ..stage import Stage
from .workerpool import Worker, WorkerPool

RSS_SECONDS = 0.25  # how often worker memory is measured


def rss(pid: int) -> int:
    """Resident bytes of a process and all of its descendants (0 if it is gone)."""
    try:
        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return 0


class Watchdog:
    """Looks at live workers for the driver; see the module docstring."""

    def __init__(self, pool: WorkerPool, executor: Executor,
                 stage_of: Callable[[str], Stage], ram_of: Callable[[str], int]) -> None:
        self.pool = pool
        self.executor = executor
        self.stage_of = stage_of  # stage name -> Stage, for timeouts
        self.ram_of = ram_of  # group name -> declared bytes (0: not limited)
        self._last_rss = 0.0

    def check(self, now: float) -> None:
        if not self.executor.can_kill:
            return
        measure = now - self._last_rss >= RSS_SECONDS
        if measure:
            self._last_rss = now
        for worker in list(self.pool.workers.values()):
            if worker.kill_reason is not None:
                continue
            self._timeout(worker, now)
            if measure and worker.kill_reason is None:
                self._memory(worker)

    def _timeout(self, worker: Worker, now: float) -> None:
        if not worker.inflight or not worker.ready:
            return
        if self.executor.knows_running:
            running = self.executor.running(worker.id)
            if running is None or running.item_id not in worker.inflight:
                return
            stage, started = worker.inflight[running.item_id].stage, running.started
        else:  # the first task sent and not heard back about, since the last results
            stage, started = next(iter(worker.inflight.values())).stage, worker.head_since
        timeout = self.stage_of(stage).timeout
        if timeout and now - started > timeout:
            self.pool.stop(worker, f"timed out after {timeout:g} s", kill=True)

    def _memory(self, worker: Worker) -> None:
        limit = self.ram_of(worker.group)
        pid = self.executor.pid(worker.id)
        if not limit or pid is None:
            return
        used = rss(pid)
        if used > limit:
            self.pool.stop(worker, f"exceeded ram {format_size(limit)} (rss {format_size(used)})",
                           kill=True)
