"""What a run measures about itself: per-stage counters and timings, worker and machine samples.

The driver feeds :class:`RunMetrics` as it records results (a few counter
updates per item, no allocation that grows with the run) and lets it sample
workers and the machine every ``TICK_SECONDS``. Each tick becomes one
``tick`` event in ``events.jsonl``, so the event log grows with the run's
duration, never with its item count. Progress views, ``conveyor status``,
the HTML report and benchmark mode all read these figures.

Item times are kept in a log-spaced histogram per stage (buckets 10 % apart),
so means and 95th percentiles cost constant memory however many items pass.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import psutil

from ..ledger import blocks
from ..ledger.base import Record, Status
from ..worker.meter import Usage

DONE, ROUTED_OUT, FAILED = Status.DONE, Status.ROUTED_OUT, Status.FAILED

TICK_SECONDS = 2.0
_BUCKETS = 400  # 1 µs .. ~10^10.6 µs at 10 % steps
_BASE = math.log(1.1)


class Histogram:
    """Durations in log-spaced buckets: mean exactly, percentiles within 10 %."""

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.n = 0
        self.total = 0.0

    def add(self, seconds: float, weight: int = 1) -> None:
        micros = max(seconds * 1e6, 1.0)
        bucket = min(int(math.log(micros) / _BASE), _BUCKETS - 1)
        self.counts[bucket] += weight
        self.n += weight
        self.total += seconds * weight

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    def percentile(self, q: float) -> float | None:
        if not self.n:
            return None
        rank, seen = q * self.n, 0
        for bucket, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return math.exp((bucket + 0.5) * _BASE) / 1e6
        return None


@dataclass
class StageMetrics:
    """One stage's figures, for the whole run and for the current tick."""

    done: int = 0
    failed: int = 0
    retried: int = 0
    routed_out: int = 0
    times: Histogram = field(default_factory=Histogram)
    batches: int = 0
    batch_items: int = 0
    first: float | None = None  # first item started
    last: float | None = None  # last item ended
    tick_done: int = 0
    tick_busy: float = 0.0  # seconds of item time in this tick
    call_s: float = 0.0  # wall seconds workers spent in its calls, over the run
    cpu_s: float = 0.0  # CPU seconds its calls consumed (see conveyor.worker.meter)
    waited_s: float = 0.0  # ... and of call_s, seconds spent waiting for a CPU

    def as_tick(self) -> dict[str, Any]:
        return {"done": self.done, "failed": self.failed, "retried": self.retried,
                "routed_out": self.routed_out, "tick_done": self.tick_done,
                "busy": round(self.tick_busy, 4), "batches": self.batches,
                "batch_items": self.batch_items, "call_s": round(self.call_s, 4),
                "cpu_s": round(self.cpu_s, 4), "waited_s": round(self.waited_s, 4)}


class RunMetrics:
    """Counters, timings and samples of one run; see the module docstring."""

    def __init__(self, stages: list[str], clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.stages = {name: StageMetrics() for name in stages}
        self.started = clock()
        self._last_tick = self.started
        self._procs: dict[int, psutil.Process] = {}  # worker id -> process, for cpu_percent
        self.peak_rss: dict[int, int] = {}  # worker id -> bytes
        self.peak_gpu: dict[int, int] = {}  # worker id -> bytes of GPU memory
        self.worker_group: dict[int, str] = {}
        self._nvml = _Nvml.open()
        psutil.cpu_percent(None)  # start the machine-wide CPU counter

    # -- fed by the driver ----------------------------------------------------------------

    def items(self, records: list[Record], calls: dict[tuple[str, float, float], int]) -> None:
        """Rows finished (or failed, or to be retried) after running ``started..ended``.

        ``calls`` are the sizes of the batch calls among them (see
        :func:`~conveyor.ledger.base.call_sizes`): a batch's time is shared by its items.
        One pass, no call per row: the driver feeds every row of the run through here.
        """
        stages = self.stages
        size = blocks.size
        for r in records:
            m = stages[r.stage]
            status = r.status
            n = size(r.key)  # a block's record stands for its items
            if status is DONE or status is ROUTED_OUT:
                m.done += n
                m.tick_done += n
                if status is ROUTED_OUT:
                    m.routed_out += n
            elif status is FAILED:
                m.failed += 1
            else:
                m.retried += 1
            started, ended = r.started, r.ended
            seconds = max(ended - started, 0.0)
            if calls:
                seconds /= calls.get((r.stage, started, ended), 1)
            m.times.add(seconds / n)
            m.tick_busy += seconds
            if m.first is None or started < m.first:
                m.first = started
            if m.last is None or ended > m.last:
                m.last = ended

    def batch(self, stage: str, size: int) -> None:
        m = self.stages[stage]
        m.batches += 1
        m.batch_items += size

    def used(self, worker_id: int, usage: Usage | None) -> None:
        """What a worker's calls cost since its last report (see :mod:`conveyor.worker.meter`)."""
        if usage is None:
            return
        spent, peak = usage
        for stage, (call_s, cpu_s, waited_s) in spent.items():
            m = self.stages[stage]
            m.call_s += call_s
            m.cpu_s += cpu_s
            m.waited_s += waited_s
        if peak:
            self.peak_rss[worker_id] = max(self.peak_rss.get(worker_id, 0), peak)

    def stage_peak_rss(self, stage: str) -> int | None:
        """The highest peak resident memory of any worker that ran ``stage`` (None: unknown)."""
        return max((rss for w, rss in self.peak_rss.items()
                    if stage in self.worker_group.get(w, "").split("+")), default=None)

    def worker(self, worker_id: int, group: str, pid: int | None) -> None:
        """A worker started; its process is sampled from now on."""
        self.worker_group[worker_id] = group
        if pid is not None:
            try:
                proc = psutil.Process(pid)
                proc.cpu_percent(None)
                self._procs[worker_id] = proc
            except psutil.Error:
                pass

    def gone(self, worker_id: int) -> None:
        self._procs.pop(worker_id, None)

    # -- ticks ------------------------------------------------------------------------------

    def due(self) -> bool:
        return self.clock() - self._last_tick >= TICK_SECONDS

    def tick(self, queues: dict[str, dict[str, int]]) -> dict[str, Any]:
        """The figures of the tick now ending (for a ``tick`` event); starts the next one."""
        now = self.clock()
        seconds = max(now - self._last_tick, 1e-9)
        self._last_tick = now
        workers = self._sample_workers()  # first: it raises the peaks the stages report
        stages = {}
        for name, m in self.stages.items():
            stages[name] = {**m.as_tick(), **queues.get(name, {}),
                            "rate": round(m.tick_done / seconds, 3)}
            stages[name]["peak_rss"] = self.stage_peak_rss(name)
            m.tick_done, m.tick_busy = 0, 0.0
        return {"seconds": round(seconds, 3), "stages": stages, "workers": workers,
                "machine": self._sample_machine()}

    def _sample_workers(self) -> dict[str, dict[str, Any]]:
        samples = {}
        gpu = self._nvml.per_pid() if self._nvml else {}
        for worker_id, proc in list(self._procs.items()):
            try:
                with proc.oneshot():
                    cpu = proc.cpu_percent(None)
                    rss = proc.memory_info().rss
                rss += sum(c.memory_info().rss for c in proc.children(recursive=True))
            except psutil.Error:
                self._procs.pop(worker_id, None)
                continue
            self.peak_rss[worker_id] = max(self.peak_rss.get(worker_id, 0), rss)
            sample = {"group": self.worker_group.get(worker_id), "cpu": round(cpu, 1),
                      "rss": rss}
            if proc.pid in gpu:
                sample["gpu_mem"] = gpu[proc.pid]
                self.peak_gpu[worker_id] = max(self.peak_gpu.get(worker_id, 0), gpu[proc.pid])
            samples[str(worker_id)] = sample
        return samples

    def _sample_machine(self) -> dict[str, Any]:
        vm = psutil.virtual_memory()
        machine: dict[str, Any] = {"cpu": psutil.cpu_percent(None), "ram_used": vm.used,
                                   "ram_total": vm.total}
        if self._nvml:
            machine["gpus"] = self._nvml.devices()
        return machine

    def close(self) -> None:
        if self._nvml:
            self._nvml.close()


class _Nvml:
    """GPU utilisation and memory through NVML, where a driver is present."""

    def __init__(self, pynvml: Any) -> None:
        self.nvml = pynvml
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                        for i in range(pynvml.nvmlDeviceGetCount())]

    @classmethod
    def open(cls) -> "_Nvml | None":
        try:
            import pynvml

            pynvml.nvmlInit()
            return cls(pynvml)
        except Exception:  # no library, no driver, no device: nothing to sample
            return None

    def devices(self) -> list[dict[str, Any]]:
        out = []
        for handle in self.handles:
            try:  # a device may refuse a query (utilisation of a MIG device): skip it
                util = self.nvml.nvmlDeviceGetUtilizationRates(handle)
                mem = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            except self.nvml.NVMLError:
                continue
            out.append({"util": util.gpu, "mem_used": mem.used, "mem_total": mem.total})
        return out

    def per_pid(self) -> dict[int, int]:
        used: dict[int, int] = {}
        for handle in self.handles:
            try:
                for p in self.nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    used[p.pid] = used.get(p.pid, 0) + (p.usedGpuMemory or 0)
            except self.nvml.NVMLError:
                continue
        return used

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:
            pass
