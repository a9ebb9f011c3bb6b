"""Fault tolerance with real processes and real signals.

A driver killed with SIGKILL at moments chosen by events, then resumed, must
end with exactly the outputs of an uninterrupted run, lose nothing, and never
run again an item that was already recorded done. Workers that die (killed,
segfault, os._exit, past their RAM, past their timeout) cost their current
item one attempt with the reason recorded, and the run goes on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conveyor import Item, Pipeline, RunLockedError, open_run
from conveyor.observe.events import read_events
from conveyor.ledger.sqlite import SqliteLedger
from helpers import (DoneAtKills, append_log, done_count, executions, kill_driver, log_offset,
                     needs_wal_syncs, read_log, wait_for)

PIPELINES = Path(__file__).parent / "pipelines"
RUNNER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {pipelines!r})
    import faulty
    faulty.pipe.run(faulty.inputs({n}), run_dir=sys.argv[1], cpus=2)
""")
N = 40  # documents; each splits into 3 parts, which work and finish; one total
ROWS = {"split": N, "work": 3 * N, "finish": 3 * N}
# (what each kill waits for, the stage whose done rows it counts, how many more this
# driver must have recorded first). Each killed driver holds the reduce in flight
# (FAULT_HOLD), so none can finish before its kill: the last kill lands there. A
# driver's first sync commits the ledger's schema on a first run; on a resume, its
# preparation.
KILLS = [("sync", "split", 0), ("done", "split", 10), ("sync", "work", 20),
         ("done", "finish", 30), ("sync", "finish", 0), ("reduce", "finish", 0)]


def start_driver(drivers: list[subprocess.Popen], run_dir: Path, log: Path, stderr: Path,
                 hold: bool) -> subprocess.Popen:
    code = RUNNER.format(pipelines=str(PIPELINES), n=N)
    env = {**os.environ, "FAULT_LOG": str(log), "FAULT_SLEEP": "0.03",
           "FAULT_HOLD": "1" if hold else "0"}
    with open(stderr, "w") as err:
        drivers.append(subprocess.Popen([sys.executable, "-c", code, str(run_dir)], env=env,
                                        stdout=subprocess.DEVNULL, stderr=err))
    return drivers[-1]


def reduce_called(log: Path, since: int) -> bool:
    """Whether the reduce logged a call past offset ``since`` of the execution log."""
    with open(log, "rb") as fh:
        fh.seek(since)
        return b"\ntotal total " in b"\n" + fh.read()


def outputs(run_dir: Path) -> dict[str, dict]:
    with open_run(run_dir) as result:
        return {stage: dict(result.outputs(stage)) for stage in result.stages}


@needs_wal_syncs
def test_kill_minus_9_anywhere_loses_nothing_and_repeats_nothing_done(tmp_path, drivers):
    clean_dir, clean_log = tmp_path / "clean", tmp_path / "clean.log"
    proc = start_driver(drivers, clean_dir, clean_log, tmp_path / "clean.err", hold=False)
    assert proc.wait(timeout=120) == 0, (tmp_path / "clean.err").read_text()[-2000:]
    expected = outputs(clean_dir)
    assert expected["total"]["total"]["n"] == 3 * N

    run_dir, log = tmp_path / "killed", tmp_path / "killed.log"
    ledger = run_dir / "ledger.db"
    seen = DoneAtKills(ledger, log)
    at_kills: list[list[int]] = []  # split, work, finish rows done at each kill
    for k, (event, stage, gain) in enumerate(KILLS):
        stderr = tmp_path / f"driver{k}.err"
        target = min(done_count(ledger, stage) + gain, ROWS[stage])
        started_at = log_offset(log)
        proc = start_driver(drivers, run_dir, log, stderr, hold=True)
        wait_for(lambda: done_count(ledger, stage) >= target,
                 f"{stage} had {target} rows done", proc, stderr, pause=0.005)
        if event == "reduce":  # in flight: its call logged, and held
            wait_for(lambda: log.exists() and reduce_called(log, started_at),
                     "the reduce was called", proc, stderr, pause=0.005)
        kill_driver(proc, stderr, sync=event == "sync")
        done = seen.note()
        at_kills.append([sum(s == name for s, _ in done) for name in ROWS])
    # the last kill caught the reduce in flight: all its input done, itself not
    assert sum(s == "finish" for s, _ in seen.done) == 3 * N
    assert ("total", "total") not in seen.done

    stderr = tmp_path / "final.err"
    proc = start_driver(drivers, run_dir, log, stderr, hold=False)
    assert proc.wait(timeout=120) == 0, stderr.read_text()[-2000:]

    # nothing lost, nothing duplicated: exactly the uninterrupted outputs
    assert outputs(run_dir) == expected
    assert seen.lost == []
    with SqliteLedger(ledger) as view:
        assert view.integrity_check() == "ok"
        counts = view.counts()
    assert all(set(c) <= {"done", "routed-out"} for c in counts.values()), counts

    # nothing committed done before a kill ran again after it
    runs, redone = executions(log, seen.done_at)
    assert redone == []
    assert len(runs) == sum(ROWS.values()) + 1  # every row ran (the reduce too), and was logged
    assert runs[("total", "total")] >= 2  # in flight at the last kill, run again after it
    extra = sum(n - 1 for n in runs.values())
    print(f"\nkills survived: {len(KILLS)}, at {at_kills} (split, work, finish) done; items "
          f"lost: 0, re-executions of done items: 0, of items in flight at a kill: {extra}")


# -- worker faults --------------------------------------------------------------------------------

def run_with_poison(run_dir: Path, poison, **options):
    """Four items; the one keyed 'poison' hits ``poison(ctx)``; returns the result."""
    pipe = Pipeline("poison")

    @pipe.stage(**options)
    def work(x, ctx):
        if ctx.key == "poison":
            poison()
        return x * 2

    return pipe.run([Item(k, i) for i, k in enumerate(["a", "b", "poison", "c"])],
                    run_dir=run_dir, cpus=2)


def only_poison_failed(result, reason: str, attempts: int) -> None:
    assert result.counts["work"]["done"] == 3
    (failure,) = result.failures()
    assert failure["key"] == "poison" and failure["attempts"] == attempts
    assert reason in failure["error"], failure["error"]


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def segfault():
    import ctypes

    ctypes.string_at(0)


def hard_exit():
    os._exit(3)


def sleep_forever():
    time.sleep(600)


def eat_memory():
    block = bytearray(400 * 2**20)
    block[::4096] = b"\x01" * (len(block) // 4096)  # touch every page: resident
    time.sleep(600)


@pytest.mark.parametrize("poison,options,reason", [
    (kill_self, {}, "worker killed by SIGKILL"),
    (segfault, {}, "worker killed by SIGSEGV"),
    (hard_exit, {}, "worker exited with code 3"),
    (sleep_forever, {"timeout": 1}, "timed out after 1 s"),
    (eat_memory, {"ram": "200MiB"}, "exceeded ram 200 MiB"),
], ids=["sigkill", "segfault", "os._exit", "timeout", "ram"])
def test_a_worker_fault_costs_its_item_an_attempt_and_the_run_goes_on(
        poison, options, reason, run_dir):
    result = run_with_poison(run_dir, poison, retries=1, retry_backoff=0.05, **options)
    only_poison_failed(result, reason, attempts=2)
    exits = [e for e in read_events(run_dir) if e["event"] == "worker_exit"]
    assert sum(reason.removeprefix("worker ") in e["reason"] for e in exits) == 2


def timed_pipeline() -> Pipeline:
    pipe = Pipeline("timed")

    @pipe.stage(timeout=0.5, retries=1, retry_backoff=0.01)
    def work(x, ctx):
        if ctx.key == "poison":
            sleep_forever()
        return x * 2

    return pipe


def test_the_inline_executor_interrupts_a_call_past_its_timeout(run_dir):
    items = [Item(k, i) for i, k in enumerate(["a", "b", "poison", "c"])]
    with timed_pipeline().run(items, run_dir=run_dir, executor="inline") as result:
        only_poison_failed(result, "StageTimeout: timed out after 0.5 s", attempts=2)
        assert dict(result.outputs("work")) == {"a": 0, "b": 2, "c": 6}


def test_the_inline_executor_refuses_a_timeout_it_cannot_enforce_off_the_main_thread(run_dir):
    # its timer is a signal, which only the main thread receives
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(timed_pipeline().run, [Item("a", 1)], run_dir=run_dir,
                             executor="inline").result()
    with result:
        (failure,) = result.failures()
    assert ("stage 'work' sets timeout=0.5, which the inline executor can enforce only in a "
            "run on the main thread") in failure["error"]


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.ray)],
                         indirect=True)  # inline would kill the test process itself
def test_a_poison_item_in_a_batch_is_isolated_on_retry(executor, run_dir, tmp_path):
    log = tmp_path / "batches.log"
    pipe = Pipeline("batch-poison")

    @pipe.stage(batch_size=8, retries=2, retry_backoff=0.05)
    def batch(values, ctx):
        append_log(log, " ".join(ctx.keys))
        if "poison" in ctx.keys:
            os.kill(os.getpid(), signal.SIGKILL)
        return values

    keys = [f"k{i}" for i in range(7)] + ["poison"]
    result = pipe.run([Item(k, k) for k in keys], run_dir=run_dir, executor=executor, cpus=2)
    assert result.counts["batch"]["done"] == 7
    (failure,) = result.failures()
    assert failure["key"] == "poison" and failure["attempts"] == 3
    assert "poison" in read_log(log)  # on retry it ran alone


def test_a_broken_setup_fails_the_stage_items_with_its_reason(run_dir):
    pipe = Pipeline("setup")

    @pipe.stage
    def start(x):
        return x

    @pipe.stage(after=start, when=lambda x: x % 2 == 0)
    class Model:
        def setup(self):
            raise FileNotFoundError("model.bin")

        def __call__(self, x):
            return x

    @pipe.stage(after=start, when=lambda x: x % 2 == 1)
    def fine(x):
        return x

    result = pipe.run([Item(str(i), i) for i in range(10)], run_dir=run_dir, cpus=2)
    assert result.counts["fine"]["done"] == 5
    assert result.counts["Model"]["failed"] == 5
    assert {f["error"] for f in result.failures()} == {
        "setup of 'Model' failed: FileNotFoundError: model.bin"}


# -- the run lock -------------------------------------------------------------------------------

def test_a_second_driver_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path, drivers):
    run_dir, stderr = tmp_path / "run", tmp_path / "holder.err"
    # it holds the reduce, so it cannot finish (and let the lock go) before it is killed
    holder = start_driver(drivers, run_dir, tmp_path / "run.log", stderr, hold=True)
    lock = run_dir / "lock"
    wait_for(lambda: lock.exists() and bool(lock.read_text()), "it wrote its lock",
             holder, stderr, pause=0.05)
    sys.path.insert(0, str(PIPELINES))
    import faulty

    with pytest.raises(RunLockedError, match=f"pid {holder.pid} on .* since "):
        faulty.pipe.run(faulty.inputs(N), run_dir=run_dir)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    faulty.pipe.run(faulty.inputs(N), run_dir=run_dir)  # the dead driver's lock is stale
    starts = [e for e in read_events(run_dir) if e["event"] == "run_start"]
    assert starts[-1]["took_over"]["pid"] == holder.pid


def waiting_in(thread: threading.Thread, function: str) -> bool:
    """Whether ``thread`` (of this process) is inside ``function`` right now."""
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def test_a_dead_drivers_lock_still_held_by_its_dying_child_is_taken_over(tmp_path):
    # The holder dies while a child it forked still holds the lock's descriptor (as a
    # worker between fork and exec does); the lock frees when the child goes, which is
    # once the new driver is seen waiting for it.
    release = tmp_path / "release"
    code = textwrap.dedent(f"""
        import os, time
        from conveyor.engine.lock import RunLock
        lock = RunLock({str(tmp_path)!r}).acquire()
        os.set_inheritable(lock._fd, True)
        if os.fork() == 0:  # the child outlives its parent, holding the descriptor
            while not os.path.exists({str(release)!r}):
                time.sleep(0.01)
            os._exit(0)
        os._exit(0)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code])
    assert holder.wait(timeout=60) == 0
    from conveyor.engine.lock import RunLock

    taken: list = []
    acquirer = threading.Thread(target=lambda: taken.append(RunLock(tmp_path).acquire()))
    acquirer.start()
    try:
        while not waiting_in(acquirer, "_wait_for"):  # it found the holder dead, the lock held
            assert acquirer.is_alive(), "acquire ended without waiting for the child"
            time.sleep(0.001)
    finally:
        release.touch()
        acquirer.join()
    (lock,) = taken  # within DEAD_HOLDER_WAIT, not refused
    try:
        assert lock.previous["pid"] == holder.pid
    finally:
        lock.release()
