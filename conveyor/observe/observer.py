"""Watching a run for the people who run it: events, live progress, benchmark mode.

The driver tells the :class:`Observer` what happens (how far it has read its
inputs, while it does: kept in ``intake.json``; results recorded, workers started
and gone) and lets it take a step each loop turn. The
observer keeps :class:`~conveyor.observe.metrics.RunMetrics`, writes a ``tick`` event
every few seconds (per-stage counts, rates, busy time, queue depths; worker
CPU, RSS and GPU memory; the machine's CPU, RAM and GPUs) and then trims the
logs grown past their size (:mod:`.logs`), keeps the live progress view up to
date, and in benchmark mode writes ``bench.json`` and prints its table at the end.
It never touches the ledger after the start.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.status import Status
from rich.table import Table

from .. import __version__, rundir, runstate
from ..ledger.base import Record, call_sizes
from ..pipeline import Pipeline
from ..resources import Budget, format_size
from ..worker.meter import Usage
from . import logs
from .events import EventLog
from .metrics import RunMetrics
from .progress import ProgressModel, ProgressView
from .usage import cores


class Observer:
    """See the module docstring."""

    def __init__(self, pipeline: Pipeline, events: EventLog, run_dir: Path, progress: bool,
                 bench: bool, console: Console | None = None) -> None:
        self.pipeline = pipeline
        self.events = events
        self.run_dir = run_dir
        self.bench = bench
        self.console = console or Console(stderr=True)
        names = list(pipeline.stages)
        self.metrics = RunMetrics(names)
        groups = {name: f"{name} (partitions)" for name, s in pipeline.stages.items() if s.group}
        declared = {name: s.resources.cpus for name, s in pipeline.stages.items()}
        self.model = ProgressModel(names, labels=groups, cpus=declared) if progress else None
        self.view = ProgressView(self.model, self.console) if self.model else None
        self._base: dict[str, dict[str, int]] = {}  # counts before this run started
        self._busy: dict[str, float] = {}
        self._batch_stages = {s.name for s in pipeline.stages.values() if s.batch_size}
        self._taking: Status | None = None  # the console's line while inputs are read

    # -- the run's life ---------------------------------------------------------------------

    def start(self, executor: str, budget: Budget, took_over: Any) -> None:
        stages = [{"name": s.name, "upstream": list(s.upstream), "cpus": s.resources.cpus,
                   "ram": s.resources.ram, "gpus": s.resources.gpus,
                   "threads": s.resources.threads, "batch_size": s.batch_size,
                   "reduce": s.reduce, "retries": s.retries, "timeout": s.timeout}
                  for s in self.pipeline.stages.values()]
        self.events.emit("run_start", pipeline=self.pipeline.name, executor=executor,
                         budget={"cpus": budget.cpus, "ram": budget.ram, "gpus": budget.gpus},
                         stages=stages, pid=os.getpid(), host=socket.gethostname(),
                         versions={"conveyor": __version__,
                                   "python": platform.python_version()},
                         took_over=took_over, bench=self.bench)
        (self.run_dir / rundir.INTAKE).unlink(missing_ok=True)  # a killed driver's, if any

    def taking_inputs(self, taken: int) -> None:
        """The run is still taking its inputs in, ``taken`` read so far: said in the run
        directory (``conveyor status`` from anywhere) and on the console."""
        runstate.write_json(self.run_dir / rundir.INTAKE, {"taken": taken})
        if not self.view:
            return
        text = runstate.taking(taken)
        if self._taking is None:
            self._taking = self.console.status(text)
            self._taking.start()
        else:
            self._taking.update(text)

    def _taken_in(self) -> None:
        """The inputs are in (or the run ended while they were read)."""
        (self.run_dir / rundir.INTAKE).unlink(missing_ok=True)
        if self._taking is not None:
            self._taking.stop()
            self._taking = None

    def prepared(self, counts: dict[str, dict[str, int]] | None) -> None:
        """The ledger is ready; ``counts`` are what earlier runs finished (views need them)."""
        self._taken_in()
        self._base = counts or {}
        if self.view:
            self.view.start()

    def finish(self, interrupted: str | None, fatal: str | None,
               queues: dict[str, dict[str, int]] | None = None) -> None:
        if queues is not None:  # the last stretch, so the figures cover the whole run
            self.events.emit("tick", **self.metrics.tick(queues))
        wall = time.time() - self.metrics.started
        self._taken_in()
        if self.view:
            self.view.stop()
        if self.bench:
            table = self.bench_table(wall)
            (self.run_dir / rundir.BENCH).write_text(json.dumps(table, indent=2))
            self.console.print(render_bench(table))
        self.events.emit("run_end", seconds=round(wall, 3), interrupted=interrupted,
                         fatal=fatal)
        self.metrics.close()

    # -- what the driver reports --------------------------------------------------------------

    def recorded(self, records: list[Record]) -> None:
        batched = [r for r in records if r.stage in self._batch_stages]
        calls = call_sizes(batched) if batched else {}
        for (stage, _, _), n in calls.items():
            self.metrics.batch(stage, n)
        self.metrics.items(records, calls)

    def used(self, worker_id: int, usage: Usage | None) -> None:
        """What a worker's calls cost, as it reported with its results."""
        self.metrics.used(worker_id, usage)

    def spilled(self, stage: str, size: int) -> None:
        """A group stage wrote ``size`` bytes of partition files."""
        if self.model is not None:
            self.model.stages[stage].label = f"{stage} (partitions, {format_size(size)} spilled)"

    def worker_started(self, worker_id: int, group: str, pid: int | None) -> None:
        self.metrics.worker(worker_id, group, pid)

    def worker_gone(self, worker_id: int) -> None:
        self.metrics.gone(worker_id)

    def step(self, queues: dict[str, dict[str, int]], workers: dict[str, int]) -> None:
        """Each loop turn: a tick event when one is due (and logs trimmed to size),
        and the progress view."""
        if self.metrics.due():
            tick = self.metrics.tick(queues)
            self.events.emit("tick", **tick)
            logs.trim_all(self.run_dir)
            for name, s in tick["stages"].items():
                if workers.get(name):
                    self._busy[name] = min(1.0, s["busy"] / (workers[name] * tick["seconds"]))
            machine = tick["machine"]
            if self.model:
                self.model.set_machine(machine["cpu"], machine["ram_used"],
                                       machine["ram_total"],
                                       [g["util"] for g in machine.get("gpus", [])])
        if self.model:
            for name, m in self.metrics.stages.items():
                base = self._base.get(name, {})
                q = queues.get(name, {})
                self.model.update(
                    name, done=base.get("done", 0) + base.get("routed-out", 0) + m.done,
                    pending=q.get("pending", 0), running=q.get("running", 0), failed=m.failed,
                    routed_out=base.get("routed-out", 0) + m.routed_out,
                    workers=workers.get(name, 0), busy=self._busy.get(name),
                    cores=cores(m.call_s, m.cpu_s, m.waited_s))
            self.view.refresh()

    # -- benchmark mode -------------------------------------------------------------------------

    def bench_table(self, wall: float) -> dict[str, Any]:
        """Per-stage wall time, items/s, mean and p95 item time, peak worker RSS and GPU memory."""
        stages = {}
        for name, m in self.metrics.stages.items():
            group_workers = [w for w, g in self.metrics.worker_group.items()
                             if name in g.split("+")]
            span = (m.last - m.first) if m.first is not None and m.last is not None else None
            stages[name] = {
                "items": m.done, "failed": m.failed, "wall_s": _round(span),
                "items_per_s": _round(m.done / span) if span else None,
                "mean_item_s": _round(m.times.mean), "p95_item_s": _round(m.times.percentile(0.95)),
                "mean_batch": _round(m.batch_items / m.batches) if m.batches else None,
                "workers": len(group_workers),
                "peak_rss": max((self.metrics.peak_rss.get(w, 0) for w in group_workers),
                                default=None) or None,
                "peak_gpu_mem": max((self.metrics.peak_gpu.get(w, 0) for w in group_workers),
                                    default=None) or None,
            }
        return {"pipeline": self.pipeline.name, "wall_s": round(wall, 3), "stages": stages}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def render_bench(table: dict[str, Any]) -> Table:
    """The benchmark table as users would otherwise build it by hand."""
    out = Table(title=f"benchmark — {table['pipeline']}, {table['wall_s']:.2f} s wall",
                caption="mean, p95: time per item; RSS, GPU mem: the peak of one worker")
    for column in ("stage", "items", "wall", "items/s", "mean", "p95", "batch", "workers",
                   "RSS", "GPU mem"):
        out.add_column(column, justify="left" if column == "stage" else "right")

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x * 1000:.2f} ms"

    for name, s in table["stages"].items():
        out.add_row(name, str(s["items"]), "-" if s["wall_s"] is None else f"{s['wall_s']:.2f} s",
                    "-" if s["items_per_s"] is None else f"{s['items_per_s']:.1f}",
                    ms(s["mean_item_s"]), ms(s["p95_item_s"]),
                    "-" if s["mean_batch"] is None else f"{s['mean_batch']:.1f}",
                    str(s["workers"]),
                    format_size(s["peak_rss"]) if s["peak_rss"] else "-",
                    format_size(s["peak_gpu_mem"]) if s["peak_gpu_mem"] else "-")
    return out
