"""What a worker's calls cost: CPU seconds and wall seconds per stage, and peak memory.

A stage declares ``cpus`` and ``ram`` and the budget trusts it; the
:class:`Meter` measures what each stage really used, so a run can say when a
declaration is wrong (see :mod:`conveyor.observe.usage`). Around each call it
reads:

* the *process's* CPU time, not the calling thread's: user code often
  computes on threads of its own (torch, onnxruntime, BLAS), and those cores
  are taken from the budget all the same. The worker's own threads (the
  one receiving tasks, the one decoding inputs ahead) are left out
  (:meth:`Meter.exclude`): their work is conveyor's, not the stage's;
* the wall time, and the part of it the calling thread spent runnable but
  waiting for a CPU (``/proc/.../schedstat``). That wait is what an
  overcommitted machine adds: four workers burning a core each on two cores
  get half a core each, and CPU over wall would say "0.5 cores", hiding the
  very overcommit it is meant to show. CPU over the wall time less that wait
  is what the call needs when it runs.

Calls of a fused chain run one after another in the same thread, so each
stage is measured around its own calls. CPU time of child processes (a
native tool run with ``subprocess``) is not counted.

Peak memory is the process's high-water mark of resident memory (``VmHWM``),
not ``getrusage``'s ``ru_maxrss``: a worker is started by ``exec`` from the
driver's process, and Linux carries the driver's peak into ``ru_maxrss``
across the ``exec``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, TypeVar

T = TypeVar("T")

#: What a worker reports with its results: ``({stage: (call_s, cpu_s, waited_s)}, peak_rss)``,
#: seconds since its previous report (in calls, CPU, waiting for a CPU in calls), and its
#: peak resident bytes so far (None: unknown).
Usage = tuple[dict[str, tuple[float, float, float]], int | None]


class Meter:
    """Per-stage call, CPU and CPU-wait seconds, accumulated between :meth:`take` calls."""

    def __init__(self) -> None:
        self._spent: dict[str, list[float]] = {}  # stage -> [call s, cpu s, waited s]
        self._schedstat: dict[int, int] = {}  # thread id -> open fd of its schedstat (-1: none)
        self._excluded: list[int] = []  # CPU-time clocks of threads whose work is not a stage's

    def exclude(self, *threads: threading.Thread) -> None:
        """Leave the CPU time of these (started) threads out of every stage's."""
        for thread in threads:
            if thread.ident is not None:
                self._excluded.append(time.pthread_getcpuclockid(thread.ident))

    def _cpu(self) -> float:
        total = time.process_time()
        for clock in self._excluded:
            try:
                total -= time.clock_gettime(clock)
            except OSError:  # the thread is gone: its time stays in, as a constant
                pass
        return total

    def measure(self, stage: str, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)``, its wall, CPU and CPU-wait seconds added to ``stage``'s."""
        # The wait is read inside the wall interval, on both sides: a wait for a CPU
        # between the reads (likely on a busy machine) then counts as busy, never as a
        # wait outside the call, which would overstate the cores.
        wall = time.perf_counter()
        cpu, waited = self._cpu(), self._waited()
        try:
            return call(*args)
        finally:
            waited = self._waited() - waited
            cpu = self._cpu() - cpu
            wall = time.perf_counter() - wall
            spent = self._spent.get(stage)
            if spent is None:
                spent = self._spent[stage] = [0.0, 0.0, 0.0]
            spent[0] += wall
            spent[1] += cpu
            spent[2] += waited

    def take(self) -> dict[str, tuple[float, float, float]]:
        """What was spent since the last take, per stage: (call, CPU, waited) seconds."""
        spent, self._spent = self._spent, {}
        return {stage: (round(s[0], 6), round(s[1], 6), round(s[2], 6))
                for stage, s in spent.items()}

    def _waited(self) -> float:
        """Seconds this thread has spent runnable, waiting for a CPU (0 where unknown)."""
        tid = threading.get_native_id()
        fd = self._schedstat.get(tid)
        if fd is None:
            try:
                fd = os.open(f"/proc/self/task/{tid}/schedstat", os.O_RDONLY)
            except OSError:  # no /proc, or a kernel without schedstat: count no wait
                fd = -1
            self._schedstat[tid] = fd
        if fd < 0:
            return 0.0
        try:
            return int(os.pread(fd, 64, 0).split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0


def peak_rss() -> int | None:
    """This process's peak resident bytes (see the module docstring), or None if unknown."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # no /proc: the driver's samples of the worker are all there is
        pass
    return None
