"""Live progress: a model fed by the driver, and two views that draw it.

:class:`ProgressModel` holds, per stage, what is done, pending, running and
failed, how many workers it has and how busy they are, and derives items/s
from recent samples and an ETA from it. Its clock is injectable, so it is
tested deterministically. :class:`ProgressView` draws it: a rich table that
redraws in place when stdout is a terminal, or one plain line per stage every
``PLAIN_SECONDS`` when it is not (CI, log files).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from rich.console import Console
from rich.live import Live
from rich.table import Table

from .. import runstate
from ..resources import format_size
from .usage import CPU_OVER

RATE_WINDOW = 10.0  # seconds of history behind items/s
LIVE_SECONDS = 0.5
PLAIN_SECONDS = 10.0


@dataclass
class StageProgress:
    """One stage as the views show it."""

    name: str
    label: str = ""  # how the views name it (a group's items are its partitions)
    done: int = 0
    pending: int = 0
    running: int = 0
    failed: int = 0
    routed_out: int = 0
    workers: int = 0
    busy: float | None = None  # fraction of its workers' time spent in calls
    cpus: float = 0.0  # CPUs one worker declares
    cores: float | None = None  # CPUs its calls used, on average while busy
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    @property
    def total(self) -> int:
        return self.done + self.pending + self.running + self.failed

    def rate(self) -> float | None:
        """Items per second over the recent window."""
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None

    def eta(self) -> float | None:
        """Seconds until what is known so far is done, at the recent rate."""
        rate = self.rate()
        left = self.pending + self.running
        if not left:
            return 0.0
        return left / rate if rate else None


class ProgressModel:
    """Per-stage progress and the machine's use; see the module docstring."""

    def __init__(self, stages: list[str], clock: Callable[[], float] = time.monotonic,
                 labels: dict[str, str] | None = None,
                 cpus: dict[str, float] | None = None) -> None:
        self.clock = clock
        self.stages = {name: StageProgress(name, (labels or {}).get(name, name),
                                           cpus=(cpus or {}).get(name, 0.0))
                       for name in stages}
        self.machine: dict[str, float] = {}
        self.taking: int | None = None  # inputs read so far, while they are being read
        self.started = clock()

    def update(self, name: str, *, done: int, pending: int, running: int, failed: int,
               routed_out: int = 0, workers: int = 0, busy: float | None = None,
               cores: float | None = None) -> None:
        s = self.stages[name]
        s.done, s.pending, s.running, s.failed = done, pending, running, failed
        s.routed_out, s.workers = routed_out, workers
        if busy is not None:
            s.busy = busy
        if cores is not None:
            s.cores = cores
        now = self.clock()
        s.samples.append((now, done))
        while len(s.samples) > 2 and now - s.samples[0][0] > RATE_WINDOW:
            s.samples.popleft()

    def set_machine(self, cpu: float, ram_used: int, ram_total: int,
                    gpus: list[float] | None = None) -> None:
        self.machine = {"cpu": cpu, "ram_used": ram_used, "ram_total": ram_total}
        if gpus:
            self.machine["gpu"] = sum(gpus) / len(gpus)

    def elapsed(self) -> float:
        return self.clock() - self.started


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1f}" if rate < 100 else f"{rate:.0f}"


def _cpu(s: StageProgress, markup: bool = True) -> str:
    """CPUs used while busy over CPUs declared, per worker: ``0.98/0.25``."""
    if s.cores is None:
        return f"-/{s.cpus:g}"
    text = f"{s.cores:.2f}/{s.cpus:g}"
    over = s.cpus and s.cores > CPU_OVER * s.cpus
    return f"[red]{text}[/]" if over and markup else text


def render_table(model: ProgressModel) -> Table:
    """The model as a rich table: one row per stage, the machine in the caption."""
    table = Table(title=f"conveyor — {_duration(model.elapsed())} elapsed", title_justify="left")
    for column in ("stage", "done/total", "running", "failed", "items/s", "ETA", "workers",
                   "busy", "cpu used/decl"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for s in model.stages.values():
        table.add_row(s.label, f"{s.done}/{s.total}", str(s.running),
                      f"[red]{s.failed}[/]" if s.failed else "0", _rate(s.rate()),
                      _duration(s.eta()), str(s.workers),
                      "-" if s.busy is None else f"{s.busy:.0%}", _cpu(s))
    table.caption = "  ".join(filter(None, (_taking(model), _machine(model))))
    return table


def _taking(model: ProgressModel) -> str:
    return "" if model.taking is None else runstate.taking(model.taking)


def _machine(model: ProgressModel) -> str:
    m = model.machine
    if not m:
        return ""
    text = (f"machine: CPU {m['cpu']:.0f}%  RAM {format_size(int(m['ram_used']))} of "
            f"{format_size(int(m['ram_total']))}")
    if "gpu" in m:
        text += f"  GPU {m['gpu']:.0f}%"
    return text


def plain_lines(model: ProgressModel) -> list[str]:
    """The model as plain text, one line per stage (for logs and CI)."""
    lines = []
    for s in model.stages.values():
        lines.append(f"[{_duration(model.elapsed())}] {s.label}: {s.done}/{s.total} done, "
                     f"{s.running} running, {s.failed} failed, {_rate(s.rate())} items/s, "
                     f"ETA {_duration(s.eta())}, {s.workers} workers, "
                     f"cpu used/declared {_cpu(s, markup=False)}")
    for extra in (_taking(model), _machine(model)):
        if extra:
            lines.append(f"[{_duration(model.elapsed())}] {extra}")
    return lines


class ProgressView:
    """Draws a model: in place on a terminal, or as periodic plain lines."""

    def __init__(self, model: ProgressModel, console: Console | None = None) -> None:
        self.model = model
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal
        self._live: Live | None = None
        self._last = -1e9

    def start(self) -> None:
        if self.live:
            self._live = Live(render_table(self.model), console=self.console,
                              auto_refresh=False, transient=False)
            self._live.start()

    def refresh(self, force: bool = False) -> None:
        now = self.model.clock()
        if not force and now - self._last < (LIVE_SECONDS if self.live else PLAIN_SECONDS):
            return
        self._last = now
        if self._live is not None:
            self._live.update(render_table(self.model), refresh=True)
        else:
            for line in plain_lines(self.model):
                self.console.print(line, markup=False, highlight=False)

    def stop(self) -> None:
        self.refresh(force=True)
        if self._live is not None:
            self._live.stop()
            self._live = None
