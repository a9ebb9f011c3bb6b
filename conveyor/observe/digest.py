"""A run's events read once, in order, into what the report shows, in bounded memory.

A run of a week writes hundreds of thousands of ticks (one every two seconds) and
millions of CPU leases (workers lend CPUs call by call); holding them all would take
gigabytes and draw charts no browser opens. :class:`RunDigest` keeps instead:

* per stage, the sums and maxima over every tick (busy time, items done, ticks with
  items queued) and the last tick (running totals: batches, usage);
* fewer than twice :data:`MAX_POINTS` ticks for the charts: every tick until there
  are twice that many, then every other one of them and of those to come, and so on
  (evenly spaced, whatever the length);
* per worker, its life and its leases as bars, a lease that begins within one
  :data:`MAX_BARS`-th of the run so far after the last ended joining it (below what
  the timeline can draw);
* the share of the run during which leases held every CPU of the budget, swept as
  the leases come (events are in time order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

MAX_POINTS = 1000  # ticks kept for the charts: this many to twice as many (650 pixels)
MAX_BARS = 1000  # lease bars per worker row, about


@dataclass
class WorkerLife:
    id: int
    group: str
    start: float
    end: float
    cpus: float
    ram: int
    gpus: float
    leases: list[tuple[float, float]] = field(default_factory=list)  # joined below MAX_BARS


@dataclass
class StageTicks:
    """One stage over every tick of the run."""

    busy: float = 0.0  # seconds of item time (each tick holds its own)
    done: int = 0  # the most done a tick counted (ticks hold running totals)
    queued: int = 0  # ticks that saw items waiting for it


class RunDigest:
    """See the module docstring; ``add`` every event of one run, then ``finish``."""

    def __init__(self, start: dict[str, Any]) -> None:
        self.start = start
        self.end: float = start["t"]  # the run's end, or its last event
        self.lives: dict[int, WorkerLife] = {}
        self._alive: set[int] = set()  # workers that have not exited
        self.stages: dict[str, StageTicks] = {}
        self.ticks: list[dict[str, Any]] = []  # for the charts: every stride-th tick
        self.tick_count = 0
        self.last_tick: dict[str, Any] | None = None
        self._stride = 1
        self._leased: dict[int, tuple[float, float]] = {}  # worker -> (since, cpus)
        self._gap = 0.0  # leases closer than this join one bar
        self._cpus = start.get("budget", {}).get("cpus")
        self._held = 0.0  # CPUs leased now
        self._swept = start["t"]
        self.cpu_full = 0.0  # seconds with every CPU of the budget leased

    @classmethod
    def of(cls, events: Iterable[dict[str, Any]]) -> "RunDigest | None":
        """The digest of one run's events (its ``run_start`` first); None if none."""
        digest = None
        for event in events:
            if digest is None:
                digest = cls(event)
            else:
                digest.add(event)
        if digest is not None:
            digest.finish()
        return digest

    def add(self, e: dict[str, Any]) -> None:
        kind = e["event"]
        if kind == "tick":
            self._tick(e)
        elif kind == "lease":  # it may come before its worker's worker_start
            life = self.lives.get(e["worker"])
            cpus = e.get("cpus", life.cpus if life else 0.0)
            self._sweep(e["t"])
            self._held += cpus
            self._leased[e["worker"]] = (e["t"], cpus)
        elif kind == "unlease":
            self._unlease(e["worker"], e["t"])
        elif kind == "worker_start":
            self.lives[e["worker"]] = WorkerLife(e["worker"], e["group"], e["t"], e["t"],
                                                 e["cpus"], e["ram"], e["gpus"])
            self._alive.add(e["worker"])
        elif kind == "worker_exit" and e["worker"] in self._alive:
            self._unlease(e["worker"], e["t"])  # a lease it held ends with it
            self.lives[e["worker"]].end = e["t"]
            self._alive.discard(e["worker"])
        self.end = e["t"]  # the events are in time order, run_end last

    @property
    def chart_ticks(self) -> list[dict[str, Any]]:
        """The ticks the charts draw: the ones kept, and the last."""
        last = [self.last_tick] if self.last_tick and self.ticks[-1] is not self.last_tick \
            else []
        return self.ticks + last

    def finish(self) -> None:
        """Close what the run left open: live workers and their leases end with it."""
        for worker in list(self._leased):
            self._unlease(worker, self.end)
        self._sweep(self.end)
        for worker in self._alive:
            self.lives[worker].end = self.end

    def _tick(self, e: dict[str, Any]) -> None:
        for name, figures in e["stages"].items():
            s = self.stages.setdefault(name, StageTicks())
            s.busy += figures.get("busy", 0.0)
            s.done = max(s.done, figures.get("done", 0))
            s.queued += 1 if figures.get("pending", 0) else 0
        if self.tick_count % self._stride == 0:
            self.ticks.append(e)
            if len(self.ticks) >= 2 * MAX_POINTS:
                self.ticks = self.ticks[::2]
                self._stride *= 2
        self.tick_count += 1
        self.last_tick = e

    def _unlease(self, worker: int, t: float) -> None:
        if worker not in self._leased:
            return
        since, cpus = self._leased.pop(worker)
        self._sweep(t)
        self._held -= cpus
        life = self.lives.get(worker)
        if life is None:
            return
        bars = life.leases
        if bars and since - bars[-1][1] <= self._gap:
            bars[-1] = (bars[-1][0], t)
        else:
            bars.append((since, t))
        if len(bars) >= 2 * MAX_BARS:  # the run is longer: draw it coarser
            self._gap = (t - self.start["t"]) / MAX_BARS
            life.leases = _joined(bars, self._gap)

    def _sweep(self, t: float) -> None:
        if self._cpus and self._held >= self._cpus - 1e-6:
            self.cpu_full += t - self._swept
        self._swept = t


def _joined(bars: list[tuple[float, float]], gap: float) -> list[tuple[float, float]]:
    """``bars`` with those that begin within ``gap`` of the last one's end joined to it."""
    out = [bars[0]]
    for start, end in bars[1:]:
        if start - out[-1][1] <= gap:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out
