"""Declared versus used: what each stage declared (``cpus``, ``ram``) next to what it took.

The budget trusts declarations: a CPU-bound stage that declares
``cpus=0.25`` on a 1-CPU budget gets four workers, each burning a core, and
every item takes four times as long. Workers measure their calls
(:mod:`conveyor.worker.meter`); the driver adds the figures up per stage and
writes them into every ``tick`` event, so this module reads them back from
the run directory, during the run or after it:

* **cores**: CPU seconds of the stage's calls over the wall seconds its
  workers spent in them, less the time they waited for a CPU (see
  :mod:`conveyor.worker.meter`): the mean cores one worker uses while busy,
  over all its workers, whether or not the machine was overcommitted;
* **peak RSS**: the highest resident memory of any of its workers (a fused
  chain's stages share their workers, and so their peak).

A stage that used more than ``CPU_OVER`` times its declared CPUs (over at
least ``MIN_BUSY_SECONDS`` of calls not waiting for a CPU, so a few short
items make no noise), or
whose peak reached ``RAM_NEAR`` of its declared ``ram``, gets a warning that
gives the figure and what to declare instead.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from ..resources import format_size
from .events import latest

CPU_OVER = 1.25  # used / declared CPUs above which a stage is named
RAM_NEAR = 0.9  # peak / declared RAM at or above which a stage is named
MIN_BUSY_SECONDS = 1.0  # call time (less CPU waits) before a stage's CPU figure is judged


@dataclass(frozen=True)
class StageUsage:
    """One stage's declaration and what its calls used."""

    stage: str
    cpus: float  # declared
    ram: int  # declared bytes; 0: not declared
    call_s: float = 0.0  # wall seconds in calls, all workers
    cpu_s: float = 0.0  # CPU seconds of those calls
    peak_rss: int | None = None  # bytes; None: not measured
    waited_s: float = 0.0  # of call_s, seconds spent waiting for a CPU

    @property
    def cores(self) -> float | None:
        """Mean cores per worker while busy, or None before any call was measured."""
        return cores(self.call_s, self.cpu_s, self.waited_s)

    def cpu_warning(self) -> str | None:
        """Why its ``cpus`` is too low, and what to declare; None if it is not."""
        cores = self.cores
        if (cores is None or self.call_s - self.waited_s < MIN_BUSY_SECONDS or not self.cpus
                or cores <= CPU_OVER * self.cpus):
            return None
        return (f"stage {self.stage!r} used {cores:.2f} cores while declaring "
                f"cpus={self.cpus:g} ({cores / self.cpus:.1f}×): "
                f"declare cpus={suggest_cpus(cores, self.cpus):g}")

    def ram_warning(self) -> str | None:
        """Why its ``ram`` is too tight, and what to declare; None if it is not."""
        if not self.ram or not self.peak_rss or self.peak_rss < RAM_NEAR * self.ram:
            return None
        return (f"stage {self.stage!r} peaked at {format_size(self.peak_rss)} of its "
                f"ram={format_size(self.ram)} ({self.peak_rss / self.ram:.0%}), close to "
                f"being killed for it: declare ram={suggest_ram(self.peak_rss)}")

    def warnings(self) -> list[str]:
        return [w for w in (self.cpu_warning(), self.ram_warning()) if w]

    def as_json(self) -> dict[str, Any]:
        """``{"declared": {cpus, ram}, "used": {cores, peak_rss, busy_s, cpu_s, waited_s}}``."""
        cores = self.cores
        return {"declared": {"cpus": self.cpus, "ram": self.ram or None},
                "used": {"cores": None if cores is None else round(cores, 3),
                         "peak_rss": self.peak_rss, "busy_s": round(self.call_s, 3),
                         "cpu_s": round(self.cpu_s, 3), "waited_s": round(self.waited_s, 3)}}


def cores(call_s: float, cpu_s: float, waited_s: float) -> float | None:
    """CPU seconds per second of calls not spent waiting for a CPU (None: no calls)."""
    running = call_s - waited_s
    return cpu_s / running if running > 0 else None


def suggest_cpus(cores: float, declared: float) -> float:
    """A declaration for ``cores`` used: to the quarter below 2 CPUs, whole above;
    never at or below what was declared (that is what was too low)."""
    step = 0.25 if cores < 2 else 1.0
    rounded = round(cores / step) * step
    return rounded if rounded > declared else math.ceil(cores / step) * step


def suggest_ram(peak: int) -> str:
    """A ``ram=`` for a stage that peaked at ``peak`` bytes: a quarter of headroom,
    rounded up to 64 MiB (below 1 GiB) or a quarter GiB, written as ``ram=`` takes it."""
    want = peak * 1.25
    if want < 2**30:
        return f"{math.ceil(want / (64 * 2**20)) * 64}MiB"
    return f"{math.ceil(want / 2**28) / 4:g}GiB"


def of_run(start: dict[str, Any] | None, last_tick: dict[str, Any] | None
           ) -> dict[str, StageUsage]:
    """Per-stage usage of one run: declarations from its ``run_start``, the figures from
    its last ``tick`` (they are running totals)."""
    declared = {s["name"]: s for s in (start or {}).get("stages", [])}
    figures: dict[str, dict[str, Any]] = (last_tick or {}).get("stages", {})
    found = {}
    for name, spec in declared.items():
        f = figures.get(name, {})
        found[name] = StageUsage(name, float(spec.get("cpus") or 0), int(spec.get("ram") or 0),
                                 f.get("call_s", 0.0), f.get("cpu_s", 0.0), f.get("peak_rss"),
                                 f.get("waited_s", 0.0))
    return found


def read_usage(run_dir: str | os.PathLike[str]) -> dict[str, StageUsage]:
    """Per-stage usage of the last run in ``run_dir`` (empty if it recorded none)."""
    found = latest(run_dir, "run_start", "tick")
    return of_run(found.get("run_start"), found.get("tick"))


def warnings(usage: dict[str, StageUsage]) -> list[str]:
    """Every stage's warnings, in stage order."""
    return [w for u in usage.values() for w in u.warnings()]
