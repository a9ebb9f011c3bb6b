"""GPU-memory sampling (conveyor.observe.metrics): per-worker GPU memory through NVML.

Each ``tick`` samples every worker's CPU and RSS and, where NVML finds a
driver, its GPU memory (the compute processes NVML lists on each device,
summed per pid), plus each device's utilisation; benchmark mode reports the
peak per stage (``peak_gpu_mem``).

Where there is no GPU (CI, this machine) the run must sample without it: no
crash, no ``gpus`` in the machine sample, no ``gpu_mem`` per worker,
``peak_gpu_mem`` None. The sampling code itself is exercised without a GPU by
feeding :class:`conveyor.observe.metrics._Nvml` NVML's own result objects (pynvml's
``c_nvmlProcessInfo_v3_t`` turned into the objects pynvml returns, its
memory and utilisation structs, its ``NVMLError`` classes) for real worker
processes. Where a GPU and CUDA-enabled torch are present, a worker's real
allocation is sampled end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conveyor import Item, Pipeline
from conveyor.observe.events import read_events
from conveyor.observe.metrics import RunMetrics, _Nvml
from conveyor.resources import detect_gpus

pynvml = pytest.importorskip("pynvml")
MiB = 2 ** 20


def nvml_finds_a_driver() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


HAS_NVML = nvml_finds_a_driver()
without_gpu = pytest.mark.skipif(HAS_NVML, reason="NVML finds a GPU driver on this machine")


def sampled_run(run_dir: Path, allocate_mib: int = 0):
    """One item on one worker of a ``gpus=1`` stage, in benchmark mode. The item waits
    until a tick in events.jsonl has sampled its own worker (found by its pid in
    ``worker_start``), then returns that sample; with ``allocate_mib`` it holds that
    much CUDA memory (torch) meanwhile, and returns a sample taken after it."""
    pipe = Pipeline("gpu-sampling")

    @pipe.stage(gpus=1, cpus=1)
    def hold(x, ctx):
        block = None
        if allocate_mib:
            import torch

            block = torch.empty(allocate_mib * MiB, dtype=torch.uint8, device="cuda")
            torch.cuda.synchronize()
        since = time.time()
        me = None
        while True:
            later = 0  # ticks of this worker stamped after ``since``
            for e in read_events(run_dir):
                if e["event"] == "worker_start" and e["pid"] == os.getpid():
                    me = str(e["worker"])
                elif (me is not None and e["event"] == "tick" and e["t"] > since
                      and me in e["workers"]):
                    # A tick is stamped once sampled: the first stamped after ``since``
                    # may have sampled before it, the next one sampled after that one.
                    later += 1
                    if later == 2:
                        del block
                        return {"worker": me, "sample": e["workers"][me],
                                "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}
            time.sleep(0.05)

    return pipe.run([Item("only", 1)], run_dir=run_dir, cpus=2, gpus=1, bench=True)


@without_gpu
def test_without_a_gpu_nvml_does_not_open_and_no_device_is_detected():
    assert _Nvml.open() is None
    assert detect_gpus() == ()
    metrics = RunMetrics(["a"])
    try:
        tick = metrics.tick({"a": {"pending": 0, "running": 0}})
    finally:
        metrics.close()
    assert "gpus" not in tick["machine"]
    assert tick["workers"] == {}


@without_gpu
def test_a_gpu_stage_runs_and_is_sampled_without_a_gpu(run_dir):
    result = sampled_run(run_dir)
    assert result.ok
    ((_, out),) = result.outputs("hold")
    assert out["visible"] == "0"  # the declared device, though none is there
    sample = out["sample"]
    assert sample["group"] == "hold"
    assert isinstance(sample["rss"], int) and sample["rss"] > 10 * MiB
    assert "gpu_mem" not in sample

    ticks = [e for e in read_events(run_dir) if e["event"] == "tick"]
    assert ticks
    assert all("gpus" not in t["machine"] for t in ticks)
    assert all("gpu_mem" not in w for t in ticks for w in t["workers"].values())

    bench = json.loads((run_dir / "bench.json").read_text())
    stage = bench["stages"]["hold"]
    assert stage["items"] == 1 and stage["workers"] == 1
    assert stage["peak_rss"] >= sample["rss"]
    assert stage["peak_gpu_mem"] is None


# -- the sampling code, fed NVML's own result objects -----------------------------------------

def nvml_process(pid: int, used: int | None):
    """A compute-process entry as ``pynvml.nvmlDeviceGetComputeRunningProcesses`` returns
    it: the C struct turned into pynvml's friendly object, ``None`` where NVML reports
    the memory as not available."""
    raw = pynvml.c_nvmlProcessInfo_v3_t()
    raw.pid = pid
    raw.usedGpuMemory = pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value if used is None else used
    obj = pynvml.nvmlStructToFriendlyObject(raw)
    if obj.usedGpuMemory == pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value:
        obj.usedGpuMemory = None  # as pynvml does
    return obj


class RecordedDevices:
    """NVML's device calls answered from recorded readings, in pynvml's own types.

    Only the calls :class:`conveyor.observe.metrics._Nvml` makes; a device whose entry is an
    error code raises pynvml's ``NVMLError`` for that code when asked for its processes.
    """

    NVMLError = pynvml.NVMLError

    def __init__(self, devices: list[dict]) -> None:
        self.readings = devices

    def nvmlDeviceGetCount(self) -> int:
        return len(self.readings)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int):
        procs = self.readings[handle]["procs"]
        if isinstance(procs, int):
            raise pynvml.NVMLError(procs)
        return [nvml_process(pid, used) for pid, used in procs]

    def nvmlDeviceGetUtilizationRates(self, handle: int):
        util = pynvml.c_nvmlUtilization_t()
        util.gpu, util.memory = self.readings[handle]["util"], 0
        return util

    def nvmlDeviceGetMemoryInfo(self, handle: int):
        mem = pynvml.c_nvmlMemory_t()
        mem.total, mem.used = self.readings[handle]["mem"]
        mem.free = mem.total - mem.used
        return mem

    def nvmlShutdown(self) -> None:
        pass


def test_per_worker_gpu_memory_sums_a_pids_entries_over_devices(tmp_path):
    # Two real worker processes (psutil samples them); NVML lists them on two devices.
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        me, other = os.getpid(), child.pid
        devices = RecordedDevices([
            {"procs": [(me, 300 * MiB), (other, None), (4_000_000, 1000 * MiB)],
             "util": 87, "mem": (80 * 2 ** 30, 1300 * MiB)},
            {"procs": [(me, 200 * MiB)], "util": 12, "mem": (80 * 2 ** 30, 200 * MiB)},
            {"procs": pynvml.NVML_ERROR_NOT_SUPPORTED, "util": 0, "mem": (40 * 2 ** 30, 0)},
        ])
        nvml = _Nvml(devices)
        assert nvml.per_pid() == {me: 500 * MiB, other: 0, 4_000_000: 1000 * MiB}
        assert nvml.devices() == [
            {"util": 87, "mem_used": 1300 * MiB, "mem_total": 80 * 2 ** 30},
            {"util": 12, "mem_used": 200 * MiB, "mem_total": 80 * 2 ** 30},
            {"util": 0, "mem_used": 0, "mem_total": 40 * 2 ** 30}]

        metrics = RunMetrics(["embed", "other"])
        if metrics._nvml is not None:
            metrics._nvml.close()
        metrics._nvml = nvml  # the sampler as RunMetrics opens it where a driver is found
        metrics.worker(1, "embed", me)
        metrics.worker(2, "other", other)
        tick = metrics.tick({})
        assert tick["workers"]["1"]["gpu_mem"] == 500 * MiB
        assert tick["workers"]["2"]["gpu_mem"] == 0  # listed, memory not available
        assert tick["workers"]["1"]["group"] == "embed" and tick["workers"]["1"]["rss"] > 0
        assert tick["machine"]["gpus"] == nvml.devices()
        assert metrics.peak_gpu == {1: 500 * MiB, 2: 0}

        # Later the first worker holds less and the second more: peaks keep the maxima.
        devices.readings[0]["procs"] = [(me, 100 * MiB), (other, 700 * MiB)]
        devices.readings[1]["procs"] = []
        tick = metrics.tick({})
        assert tick["workers"]["1"]["gpu_mem"] == 100 * MiB
        assert tick["workers"]["2"]["gpu_mem"] == 700 * MiB
        assert metrics.peak_gpu == {1: 500 * MiB, 2: 700 * MiB}

        # A worker NVML does not list has no gpu_mem at all (not 0).
        devices.readings[0]["procs"] = [(other, 700 * MiB)]
        tick = metrics.tick({})
        assert "gpu_mem" not in tick["workers"]["1"]
        assert metrics.peak_gpu == {1: 500 * MiB, 2: 700 * MiB}

        # A worker that is gone is no longer sampled.
        child.stdin.close()
        child.wait()
        tick = metrics.tick({})
        assert set(tick["workers"]) == {"1"}
        metrics.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


# -- a real GPU -------------------------------------------------------------------------------------

def cuda_torch() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return HAS_NVML and torch.cuda.is_available()


@pytest.mark.skipif(not cuda_torch(), reason="needs an NVIDIA GPU and CUDA-enabled torch")
def test_a_workers_real_gpu_allocation_is_sampled(run_dir):
    result = sampled_run(run_dir, allocate_mib=256)
    assert result.ok, result.failures()
    ((_, out),) = result.outputs("hold")
    assert out["sample"]["gpu_mem"] >= 256 * MiB
    bench = json.loads((run_dir / "bench.json").read_text())
    assert bench["stages"]["hold"]["peak_gpu_mem"] >= 256 * MiB
    assert any("gpus" in t["machine"] for t in read_events(run_dir) if t["event"] == "tick")
