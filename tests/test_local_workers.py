"""The local executor's promises about resources, checked with real worker processes.

The budget is checked twice over: from the driver's event log (RAM and GPUs
over each worker's life, from start to exit; CPUs over each CPU lease, the
only time a worker may compute) and from the workers themselves (each call
records its pid and time span, and calls only run under a lease).

Where a test needs workers to run at the same time, their calls meet at a
rendezvous (files in the test's temporary directory) instead of hoping that
they overlap: a call waits until the others have arrived, and gives up, failing
its item, only after WAIT_SECONDS.
"""

from __future__ import annotations

import os
import time

import pytest

from conveyor import Item, Pipeline
from conveyor.observe.events import read_events
from helpers import append_log, read_log

GiB = 2**30
WAIT_SECONDS = 60.0  # generous: a rendezvous that is not reached fails the item


def wait_until(condition, what: str) -> None:
    """Return once ``condition()`` holds; raise (failing the calling item) after
    WAIT_SECONDS. Called in worker processes."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {WAIT_SECONDS:g}s for {what}")
        time.sleep(0.005)


def claim(path) -> bool:
    """True for exactly one caller among all processes: the one that creates ``path``."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def peak(intervals: list[tuple[float, float, dict[str, float]]]) -> dict[str, float]:
    """The largest sum of each resource over intervals alive at the same moment."""
    points = sorted({start for start, _, _ in intervals})
    best: dict[str, float] = {}
    for t in points:
        alive = [res for start, end, res in intervals if start <= t < end]
        for name in alive[0] if alive else {}:
            best[name] = max(best.get(name, 0.0), sum(r[name] for r in alive))
    return best


def worker_lives(run_dir) -> list[tuple[float, float, dict[str, float]]]:
    """(start, exit, {ram, gpus}) of every worker, from the event log."""
    starts, lives = {}, []
    for event in read_events(run_dir):
        if event["event"] == "worker_start":
            starts[event["worker"]] = event
        elif event["event"] == "worker_exit":
            s = starts.pop(event["worker"])
            lives.append((s["t"], event["t"], {"ram": s["ram"], "gpus": s["gpus"]}))
    assert not starts, "every worker that started is recorded as exited"
    return lives


def cpu_leases(run_dir) -> list[tuple[float, float, dict[str, float]]]:
    """(granted, returned, {cpus}) of every CPU lease, from the event log."""
    held, leases = {}, []
    for event in read_events(run_dir):
        if event["event"] == "lease":
            assert event["worker"] not in held, "a worker was leased twice"
            held[event["worker"]] = event
        elif event["event"] == "unlease":
            g = held.pop(event["worker"])
            leases.append((g["t"], event["t"], {"cpus": g["cpus"]}))
    assert not held, "every lease was returned"
    return leases


def test_the_sum_of_running_workers_never_exceeds_the_budget(run_dir, tmp_path):
    """The budget is used, not only respected: one call of ``a`` is held until a call of
    ``b`` has begun while it runs, so a worker of each holds its CPU lease at one moment."""
    log = tmp_path / "calls.log"
    blocking, met = tmp_path / "a-blocking", tmp_path / "b-met-a"
    declared = {"a": (1.0, 1 * GiB, 0.0), "b": (0.5, GiB // 2, 0.5), "c": (0.5, 0, 0.0)}
    pipe = Pipeline("budget")

    def record(stage):
        start = time.time()
        time.sleep(0.02)
        append_log(log, f"{stage} {os.getpid()} {start} {time.time()}")

    @pipe.stage(cpus=1, ram="1GiB")
    def a(x):
        # The first call of ``a`` to start once an output of ``a`` exists (so ``b`` has work)
        # waits for ``b``; only one does, so ``a`` never holds every CPU waiting.
        if any(line.startswith("a ") for line in read_log(log)) and claim(blocking):
            wait_until(met.exists, "a call of b to start while a call of a runs")
        record("a")
        return x

    @pipe.stage(after=a, cpus=0.5, ram="512MiB", gpus=0.5)
    def b(x):
        wait_until(blocking.exists, "a call of a to wait for b")  # the first call only
        met.touch()  # the call of a that created ``blocking`` is still running
        record("b")
        return x

    @pipe.stage(after=b, cpus=0.5)
    def c(x):
        record("c")
        return x

    result = pipe.run([Item(str(i), i) for i in range(60)], run_dir=run_dir, cpus=2,
                      ram="2GiB", gpus=1)
    assert result.ok, result.failures()

    memory = peak(worker_lives(run_dir))
    assert memory["ram"] <= 2 * GiB and memory["gpus"] <= 1
    cpus = peak(cpu_leases(run_dir))["cpus"]
    assert cpus <= 2
    assert cpus >= 1.5, "a's lease (1) and b's (0.5) were not held at one moment"

    calls = []
    for line in read_log(log):
        stage, pid, start, end = line.split()
        cpus, ram, gpus = declared[stage]
        calls.append((float(start), float(end), pid, {"cpus": cpus, "ram": ram, "gpus": gpus}))
    # one process counts once, however many of its calls overlap a moment
    worst: dict[str, float] = {}
    for t, _, _, _ in calls:
        alive = {pid: res for s, e, pid, res in calls if s <= t < e}
        for name in ("cpus", "ram", "gpus"):
            worst[name] = max(worst.get(name, 0), sum(r[name] for r in alive.values()))
    assert worst["cpus"] <= 2 and worst["ram"] <= 2 * GiB and worst["gpus"] <= 1


def test_threads_and_gpu_visibility_are_pinned_per_worker(run_dir):
    pipe = Pipeline("pinning")
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
             "CUDA_VISIBLE_DEVICES", "CONVEYOR_TEST_VAR")

    def environment():
        return {name: os.environ.get(name) for name in names}

    @pipe.stage(cpus=1)
    def cpu_only(x):
        return environment()

    @pipe.stage(after=cpu_only, cpus=1, threads=3, env={"CONVEYOR_TEST_VAR": "set"})
    def threaded(x):
        return environment()

    @pipe.stage(after=threaded, cpus=0.5, gpus=1)
    def one_gpu(x):
        return environment()

    @pipe.stage(after=one_gpu, cpus=0.5, gpus=0.5)
    def half_gpu(x):
        return environment()

    result = pipe.run(["x"], run_dir=run_dir, cpus=4, gpus=2)
    out = {stage: dict(result.outputs(stage))["x"]
           for stage in ("cpu_only", "threaded", "one_gpu", "half_gpu")}
    assert out["cpu_only"] == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                               "OPENBLAS_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
                               "CONVEYOR_TEST_VAR": None}
    assert out["threaded"]["OMP_NUM_THREADS"] == "3"
    assert out["threaded"]["OPENBLAS_NUM_THREADS"] == "3"
    assert out["threaded"]["CONVEYOR_TEST_VAR"] == "set"
    assert out["one_gpu"]["CUDA_VISIBLE_DEVICES"] in ("0", "1")
    assert out["half_gpu"]["CUDA_VISIBLE_DEVICES"] in ("0", "1")


def test_two_half_gpu_workers_share_one_device_at_the_same_time(run_dir, tmp_path):
    """gpus=0.5 under a budget of one (declared) device: two workers run at once, both on
    device 0. Each call waits until a call of another process has begun, so the two
    items are done only if both workers computed at the same time."""
    arrived = tmp_path / "arrived"
    arrived.mkdir()
    pipe = Pipeline("shared-gpu")

    @pipe.stage(cpus=0.5, gpus=0.5)
    def embed(x):
        (arrived / str(os.getpid())).touch()
        wait_until(lambda: len(os.listdir(arrived)) >= 2, "the other half-GPU worker")
        return {"pid": os.getpid(), "device": os.environ["CUDA_VISIBLE_DEVICES"]}

    result = pipe.run(["a", "b"], run_dir=run_dir, cpus=2, gpus=1)
    assert result.ok, result.failures()
    out = [value for _, value in sorted(result.outputs("embed"))]
    assert {o["pid"] for o in out} == {int(name) for name in os.listdir(arrived)}
    assert len({o["pid"] for o in out}) == 2
    assert [o["device"] for o in out] == ["0", "0"]
    starts = _events(run_dir, "worker_start")
    assert sorted(e["pid"] for e in starts) == sorted(o["pid"] for o in out)
    assert [(e["gpus"], e["devices"]) for e in starts] == [(0.5, ["0"]), (0.5, ["0"])]


@pytest.mark.slow
def test_torch_runs_on_the_stages_thread_count(run_dir):
    pytest.importorskip("torch", reason="torch comes with the docs extra")
    pipe = Pipeline("torch-threads")

    class TorchThreads:
        def setup(self):
            import torch

            self.torch = torch

        def __call__(self, x):
            return self.torch.get_num_threads()

    pipe.stage(TorchThreads, name="one", cpus=1, threads=1)
    pipe.stage(TorchThreads, name="three", after="one", cpus=2, threads=3)
    result = pipe.run(["x"], run_dir=run_dir, cpus=2)
    assert result.ok, result.failures()
    assert (result.output("one"), result.output("three")) == (1, 3)


def test_concurrency_caps_a_stage_with_room_to_spare(run_dir):
    pipe = Pipeline("cap")

    @pipe.stage(cpus=0.25, concurrency=1)
    def limited(x):
        time.sleep(0.01)
        return os.getpid()

    result = pipe.run([Item(str(i), i) for i in range(30)], run_dir=run_dir, cpus=2)
    assert result.ok
    lives = worker_lives(run_dir)
    assert peak([(s, e, {"n": 1.0}) for s, e, _ in lives])["n"] == 1


def test_an_uncapped_cheap_stage_gets_as_many_workers_as_the_cpus_allow(run_dir, tmp_path):
    """40 items of a cpus=0.5 stage under cpus=2: four workers compute at once. Each call
    waits until calls from four distinct processes have begun, so the run finishes only if
    four workers ran at the same time."""
    arrived = tmp_path / "arrived"
    arrived.mkdir()
    pipe = Pipeline("spread")

    @pipe.stage(cpus=0.5)
    def work(x):
        (arrived / str(os.getpid())).touch()
        wait_until(lambda: len(os.listdir(arrived)) >= 4, "four workers to compute at once")
        return os.getpid()

    result = pipe.run([Item(str(i), i) for i in range(40)], run_dir=run_dir, cpus=2)
    assert result.ok, result.failures()
    pids = {pid for _, pid in result.outputs("work")}
    assert pids == {int(name) for name in os.listdir(arrived)}
    assert pids <= {e["pid"] for e in _events(run_dir, "worker_start")}
    assert len(pids) >= 4
    assert peak(cpu_leases(run_dir))["cpus"] == 2.0  # four leases of 0.5 at once, no more


def test_worker_logs_land_in_the_run_directory(run_dir):
    pipe = Pipeline("logs")

    @pipe.stage
    def noisy(x):
        print(f"hello from {x}", flush=True)
        return x

    pipe.run(["k"], run_dir=run_dir)
    assert "hello from k" in (run_dir / "logs" / "noisy.log").read_text()


def test_queues_between_stages_are_bounded(run_dir, tmp_path, monkeypatch):
    """A producer far faster than its consumer is throttled, not allowed to run ahead.

    The consumer's first call waits until the producer has filled the queue to its
    bound, so the bound is reached by construction; no call may ever see more."""
    import conveyor.engine.backpressure

    monkeypatch.setattr(conveyor.engine.backpressure, "QUEUE_LIMIT", 20)
    ledger_path = str(run_dir / "ledger.db")
    first = tmp_path / "first-slow-call"
    pipe = Pipeline("backpressure")

    @pipe.stage(cpus=0.5)
    def fast(x):
        return x

    @pipe.stage(after=fast, cpus=0.5, concurrency=1)
    def slow(x):
        import sqlite3

        def waiting():
            db = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
            (n,) = db.execute(
                "SELECT count(*) FROM items WHERE stage='slow' AND status='pending'").fetchone()
            db.close()
            return n

        if claim(first):
            wait_until(lambda: waiting() >= 20, "the queue before slow to fill to its bound")
        time.sleep(0.005)
        return waiting()

    result = pipe.run([Item(f"{i:04d}", i) for i in range(300)], run_dir=run_dir, cpus=1)
    assert result.ok, result.failures()
    backlog = [n for _, n in result.outputs("slow")]
    # items in flight count against the limit, so the queue itself never passes it; the
    # first call waited for it to reach the bound
    assert max(backlog) == 20, max(backlog)


def test_fast_stages_with_large_values_keep_both_pipes_moving(run_dir):
    """A fast stage's window grows to hundreds of tasks; with values of a few KiB the
    tasks sent and the results coming back each fill a pipe. The worker must keep
    receiving while its main thread waits to send results (the driver, blocked
    sending, reads nothing): before the reader and the loader were two threads, this
    run stopped for good at about 2,000 items."""
    pipe = Pipeline("large-fast")

    @pipe.stage(cpus=0.5)
    def first(v):
        return v

    @pipe.stage(after=first, cpus=0.5)
    def second(v):
        return {"n": v["n"], "sig": list(range(v["n"] % 7, 160)), "text": v["text"]}

    items = [Item(f"k{i:05d}", {"n": i, "text": f"{i:05d}" * 800}) for i in range(4000)]
    result = pipe.run(items, run_dir=run_dir, cpus=2)
    assert result.ok, result.failures()
    outputs = dict(result.outputs("second"))
    assert len(outputs) == 4000
    assert all(v["text"] == f"{v['n']:05d}" * 800 and v["sig"][0] == v["n"] % 7
               for v in outputs.values())


def _events(run_dir, name):
    return [e for e in read_events(run_dir) if e["event"] == name]


def test_the_first_worker_starts_while_the_inputs_are_taken_in(run_dir):
    """Its start-up overlaps reading the inputs on a first run; a rerun that finds every
    input done starts no worker at all."""
    pipe = Pipeline("early")

    @pipe.stage
    def double(x):
        return 2 * x

    assert pipe.run(range(50), run_dir=run_dir).ok
    events = [e["event"] for e in read_events(run_dir)]
    assert events.index("worker_start") < events.index("inputs")
    assert pipe.run(range(50), run_dir=run_dir).ok
    last_run = "".join(e["event"] + "\n" for e in read_events(run_dir)).split("run_start")[-1]
    assert "worker_start" not in last_run


def test_a_worker_started_early_goes_when_the_inputs_are_refused(run_dir):
    import psutil

    from conveyor.errors import InputError

    pipe = Pipeline("refused")

    @pipe.stage
    def double(x):
        return 2 * x

    with pytest.raises(InputError, match="duplicate input key 'a'"):
        pipe.run([Item("a", 1), Item("b", 2), Item("a", 3)], run_dir=run_dir)
    (start,) = _events(run_dir, "worker_start")
    assert [e["worker"] for e in _events(run_dir, "worker_exit")] == [start["worker"]]
    assert not psutil.pid_exists(start["pid"])


def test_an_idle_gpu_worker_gives_its_lease_to_the_stage_that_feeds_it(run_dir):
    """1.25 CPUs: b's GPU worker (0.5) and c's (0.5) must not hold what a (1) needs."""
    pipe = Pipeline("gpu-lease")

    @pipe.stage(cpus=1)
    def a(x):
        return x

    @pipe.stage(after=a, cpus=0.5, gpus=0.5)
    def b(x):
        return x

    @pipe.stage(after=b, cpus=0.5)
    def c(x):
        return x

    result = pipe.run([Item(str(i), i) for i in range(30)], run_dir=run_dir, cpus=1.25,
                      gpus=1)
    assert result.ok and dict(result.outputs("c")) == {str(i): i for i in range(30)}


def test_a_bursty_upstream_does_not_set_an_expensive_stage_up_again(run_dir, tmp_path):
    """Work comes in three bursts with pauses between them. A stage whose setup takes
    3 s (a model load) keeps the workers it set up through the pauses, while its
    upstream is not finished: each worker slot is set up once. (Before, a worker
    beyond the one the plan keeps for expected work was stopped after half a second
    idle, and set up again at the next burst.)"""
    setups, done = tmp_path / "setups.log", tmp_path / "done.log"
    pipe = Pipeline("bursty")

    def ticks() -> int:
        return sum(1 for e in read_events(run_dir) if e["event"] == "tick")

    @pipe.stage(concurrency=1)
    def source(burst):
        """Burst b waits until the previous burst is done and the driver has sampled
        twice since (a pause of at least one whole sampling interval), then fans out."""
        if burst:
            wait_until(lambda: len(read_log(done)) >= 4 * burst, "the previous burst")
            seen = ticks()
            wait_until(lambda: ticks() >= seen + 2, "a pause of two driver samples")
        yield from range(4 * burst, 4 * burst + 4)

    @pipe.stage(after=source, concurrency=2)
    class Model:
        def setup(self):
            time.sleep(3)  # the expensive setup being simulated: a model load
            append_log(setups, str(os.getpid()))

        def __call__(self, x):
            time.sleep(0.5)  # a burst is two workers' worth of work
            append_log(done, str(x))
            return x

    result = pipe.run([Item(str(b), b) for b in range(3)], run_dir=run_dir, cpus=4)
    assert result.ok, result.failures()
    assert sorted(v for _, v in result.outputs("Model")) == list(range(12))
    pids = read_log(setups)
    assert len(pids) == 2 and len(set(pids)) == 2, "one setup per worker slot"
    assert result.setups["Model"]["setups"] == 2
    assert result.setups["Model"]["setup_s"] >= 3
