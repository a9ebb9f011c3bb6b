"""The Ray executor beyond the contract suite: real actor deaths, a killed driver, the
store URL and the CLI joining a running cluster. (The error without Ray installed is
tested in test_definitions.py, which runs where Ray is missing.)

Everything runs on the session's local Ray instance (see conftest) except the
driver-kill test, whose driver starts its own Ray as a user's would.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from conveyor import BudgetError, Item, Pipeline, StoreError, open_run
from conveyor.observe.events import read_events
from helpers import append_log, read_log

pytestmark = pytest.mark.ray
PIPELINES = Path(__file__).parent / "pipelines"


@pytest.fixture(autouse=True)
def ray_session(ray_instance):
    return ray_instance


def slow_chain(log: Path) -> Pipeline:
    """Two stages; every call logs "stage key pid" so a test can find and kill actors."""
    pipe = Pipeline("ray-chain")

    @pipe.stage(cpus=1, retries=2, retry_backoff=0.05)
    def work(x, ctx):
        append_log(log, f"work {ctx.key} {os.getpid()}")
        time.sleep(0.05)
        return x * 2

    @pipe.stage(after=work, cpus=1, retries=2, retry_backoff=0.05)
    def finish(x, ctx):
        append_log(log, f"finish {ctx.key} {os.getpid()}")
        return x + 1

    return pipe


def test_an_actor_process_killed_mid_run_is_replaced_and_nothing_is_lost(run_dir, tmp_path):
    log = tmp_path / "calls.log"
    n = 60
    killed: list[int] = []

    def killer() -> None:
        """SIGKILL the process of the ``work`` actor once it has done a few items."""
        deadline = time.time() + 60
        while time.time() < deadline:
            calls = [line.split() for line in read_log(log) if line.startswith("work")]
            if len(calls) >= 10:
                pid = int(calls[-1][2])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=killer)
    thread.start()
    result = slow_chain(log).run([Item(f"k{i:02d}", i) for i in range(n)], run_dir=run_dir,
                                 executor="ray", cpus=2)
    thread.join()
    assert killed, "the run ended before an actor could be killed"
    assert result.ok
    assert dict(result.outputs("finish")) == {f"k{i:02d}": 2 * i + 1 for i in range(n)}
    # the dead actor was replaced: later work ran in another process
    pids = {int(line.split()[2]) for line in read_log(log) if line.startswith("work")}
    assert pids - set(killed)
    exits = [e["reason"] for e in read_events(run_dir) if e["event"] == "worker_exit"]
    assert any("died" in reason for reason in exits), exits


def test_an_actor_killed_with_ray_kill_costs_its_item_one_attempt(run_dir):
    pipe = Pipeline("ray-kill")

    @pipe.stage(retries=1, retry_backoff=0.05)
    def work(x, ctx):
        if ctx.key == "poison":
            import ray

            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
            time.sleep(30)  # the kill lands while this call is running
        return x * 2

    result = pipe.run([Item(k, i) for i, k in enumerate(["a", "b", "poison", "c"])],
                      run_dir=run_dir, executor="ray", cpus=2)
    assert result.counts["work"]["done"] == 3
    (failure,) = result.failures()
    assert failure["key"] == "poison" and failure["attempts"] == 2
    assert "worker died" in failure["error"], failure["error"]


def test_without_retries_only_the_item_that_kills_its_actor_fails(run_dir):
    # Many fast calls are in flight on each actor: when one kills it, Ray also drops
    # the answers of calls it had finished; those items must not be charged for it.
    pipe = Pipeline("ray-poison-solo")

    @pipe.stage(cpus=1)
    def fast(value):
        if value == "poison":
            os.kill(os.getpid(), signal.SIGKILL)
        return value

    keys = [f"k{i:03d}" for i in range(200)]
    keys.insert(100, "poison")
    result = pipe.run(keys, run_dir=run_dir, executor="ray", cpus=2)
    assert [f["key"] for f in result.failures()] == ["poison"]
    assert result.counts["fast"]["done"] == 200


@pytest.mark.parametrize("poison", ["dies", "hangs"])
def test_a_fast_stage_runs_in_blocks_and_a_death_in_one_blames_only_its_item(
        run_dir, tmp_path, poison):
    # Each call logs the actor call it runs in (see actor_call).
    # Once the stage's pace is known, many items share one actor call. The first item
    # past k150 that runs after another in the same call becomes the poison (named in
    # a file): it dies, or hangs past the timeout, there and wherever it runs again.
    # The call takes the answers of the items it had run before the poison with it:
    # those run again without being charged an attempt, and only the poison fails.
    log, named = tmp_path / "calls.log", tmp_path / "poison"
    pipe = Pipeline("ray-blocks")
    previous = {}  # this actor's last call (the function is copied into each actor)

    @pipe.stage(cpus=1, timeout=2)
    def fast(value):
        call = actor_call()
        append_log(log, f"{value} {call}")
        in_block = previous.get("call") == call
        previous["call"] = call
        if in_block and value >= "k150" and not named.exists():
            try:
                with open(named, "x") as fh:
                    fh.write(value)
            except FileExistsError:
                pass  # another actor's item was first
        if named.exists() and named.read_text() == value:
            if poison == "dies":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(600)
        return value

    keys = [f"k{i:03d}" for i in range(300)]
    result = pipe.run(keys, run_dir=run_dir, executor="ray", cpus=2)
    assert named.exists(), "no item ran after another in the same actor call"
    victim = named.read_text()
    (failure,) = result.failures()
    assert failure["key"] == victim and failure["attempts"] == 1
    why = "worker died" if poison == "dies" else "timed out after 2 s"
    assert why in failure["error"], failure["error"]
    assert result.counts["fast"]["done"] == 299
    calls = [line.split() for line in read_log(log)]
    assert len({call for _, call in calls}) < len(calls), "items did not share actor calls"
    died = next(i for i, (key, _) in enumerate(calls) if key == victim)
    lost = {key for key, call in calls if call == calls[died][1] and key != victim}
    assert lost  # it ran in a block, after these
    again = {key for key, call in calls if key in lost and call != calls[died][1]}
    assert again == lost  # their answers died with the actor: they ran again, elsewhere
    db = sqlite3.connect(f"file:{run_dir / 'ledger.db'}?mode=ro", uri=True)
    try:
        attempts = dict(db.execute("SELECT key, attempts FROM items WHERE status = 'done'"))
    finally:
        db.close()
    assert {attempts[key] for key in lost} == {1}


def actor_call() -> str:
    """The actor call the stage runs in, seen from inside it: the actor's process and the
    first task of the block its ``_run()`` took (read from its frame: the calls run on a
    thread of the actor's own, outside Ray's task context). A task runs again only on
    another actor here (its actor died), so no two calls share both."""
    frame = sys._getframe(1)
    while not (frame.f_code.co_name == "_run" and "block" in frame.f_locals):
        frame = frame.f_back
    return f"{os.getpid()}:{frame.f_locals['block'][0][0].id}"


def test_a_workers_first_calls_grow_from_one_task():
    # A worker's first actor calls hold 1, 1, 2, 4, ... tasks up to the pace's share, so
    # the stage below gets the first outputs at once; a later send carries on from the
    # calls already made for that worker.
    from conveyor.executors.ray import _blocks
    from conveyor.ledger.base import Claim

    tasks = [Claim(i, "s", f"k{i}", 1, b"0", None) for i in range(40)]
    assert [len(b) for b in _blocks(tasks, None, set(), per_call=8)] == [1, 1, 2, 4] + [8] * 4
    assert [len(b) for b in _blocks(tasks[:10], None, set(), per_call=8, made=5)] == [8, 2]


def test_an_actor_gets_its_place_while_another_stage_holds_the_only_cpu(run_dir):
    # Ray takes a while to place an actor (a process to find or start), using none of
    # the run's CPUs, so an actor is leased a CPU only once placed, for its setup.
    # Within a one-CPU budget, "first" holds the lease while its item waits for the
    # actor of "second" to be asked for. Before, an actor held a lease from its start,
    # so it was not asked for while the lease was taken: the item waited out its
    # minute and failed.
    pipe = Pipeline("ray-place")
    events = run_dir  # the closure travels to the actor

    @pipe.stage(cpus=1)
    def first(x):
        deadline = time.monotonic() + 60
        while not any(e["event"] == "worker_start" and e["group"] == "second"
                      for e in read_events(events)):
            if time.monotonic() > deadline:
                raise TimeoutError("the actor of 'second' was never asked for")
            time.sleep(0.01)
        return x

    @pipe.stage(after=first, cpus=1, env={"STAGE": "second"})  # not fused with first
    def second(x):
        return x

    result = pipe.run([Item(str(i), i) for i in range(4)], run_dir=run_dir,
                      executor="ray", cpus=1)
    assert result.ok, result.failures()
    assert dict(result.outputs("second")) == {str(i): i for i in range(4)}
    seen = [(e["event"], e["group"]) for e in read_events(run_dir)
            if e["event"] in ("worker_start", "worker_placed", "lease")]
    # each setup was leased after its actor was placed, never before
    for group in ("first", "second"):
        assert seen.index(("worker_placed", group)) < seen.index(("lease", group))


def test_on_one_node_actors_lend_their_cpus_between_calls(run_dir):
    # As local workers do: within a one-CPU budget the actors of both stages live
    # together (each reserves half a CPU with Ray) and take turns at the CPU lease.
    pipe = Pipeline("ray-lend")

    @pipe.stage(cpus=1)
    def first(x):
        time.sleep(0.01)
        return x

    @pipe.stage(after=first, cpus=1, env={"STAGE": "second"})  # not fused with first
    def second(x):
        time.sleep(0.01)
        return x

    result = pipe.run([Item(str(i), i) for i in range(100)], run_dir=run_dir,
                      executor="ray", cpus=1)
    assert result.ok and result.counts["second"]["done"] == 100
    live: dict[int, str] = {}
    leased: dict[int, float] = {}
    together, most = False, 0.0
    for e in read_events(run_dir):
        if e["event"] == "worker_start":
            live[e["worker"]] = e["group"]
        elif e["event"] == "worker_exit":
            live.pop(e["worker"], None)
        elif e["event"] == "lease":
            leased[e["worker"]] = e["cpus"]
        elif e["event"] == "unlease":
            leased.pop(e["worker"], None)
        together |= set(live.values()) == {"first", "second"}
        most = max(most, sum(leased.values()))
    assert together, "the two stages' actors never lived at the same time"
    assert most <= 1


def test_a_broken_setup_fails_the_stage_items_with_its_reason(run_dir):
    pipe = Pipeline("ray-broken-setup")

    @pipe.stage
    class Broken:
        def setup(self):
            raise RuntimeError("no model here")

        def __call__(self, x):
            return x

    result = pipe.run(["a", "b"], run_dir=run_dir, executor="ray", cpus=2)
    assert result.counts["Broken"]["failed"] == 2
    assert all("setup of 'Broken' failed: RuntimeError: no model here" in f["error"]
               for f in result.failures())


def test_a_timeout_kills_the_actor_and_fails_only_its_item(run_dir):
    pipe = Pipeline("ray-timeout")

    @pipe.stage(timeout=1, retries=0)
    def work(x, ctx):
        if ctx.key == "stuck":
            time.sleep(600)
        return x

    result = pipe.run([Item(k, i) for i, k in enumerate(["a", "stuck", "b", "c"])],
                      run_dir=run_dir, executor="ray", cpus=2)
    assert result.counts["work"]["done"] == 3
    (failure,) = result.failures()
    assert failure["key"] == "stuck" and "timed out after 1 s" in failure["error"]


def test_an_actor_past_its_ram_is_killed_and_only_its_item_fails(run_dir):
    pipe = Pipeline("ray-ram")

    @pipe.stage(ram="200MiB", retries=0)
    def work(x, ctx):
        if ctx.key == "hog":
            block = bytearray(400 * 2**20)
            block[::4096] = b"\x01" * (len(block) // 4096)  # touch every page: resident
            time.sleep(600)
        return x

    result = pipe.run([Item(k, i) for i, k in enumerate(["a", "hog", "b"])],
                      run_dir=run_dir, executor="ray", cpus=2)
    assert result.counts["work"]["done"] == 2
    (failure,) = result.failures()
    assert failure["key"] == "hog" and "exceeded ram 200 MiB" in failure["error"]


def test_what_a_stage_prints_lands_in_the_run_directory(run_dir):
    pipe = Pipeline("ray-logs")

    @pipe.stage
    def noisy(x):
        print(f"hello from {x}", flush=True)
        print(f"warning about {x}", file=sys.stderr, flush=True)
        return x

    pipe.run(["k"], run_dir=run_dir, executor="ray", cpus=1)
    text = (run_dir / "logs" / "noisy.log").read_text()
    assert "hello from k" in text and "warning about k" in text


def test_time_in_setup_does_not_count_towards_an_item_timeout(run_dir):
    pipe = Pipeline("ray-slow-setup")

    @pipe.stage(timeout=1, retries=0)
    class Slow:
        def setup(self):
            time.sleep(2)  # tasks were sent meanwhile; their clock starts after this

        def __call__(self, x):
            time.sleep(0.3)  # still running when the driver hears the actor is ready
            return x

    result = pipe.run([Item(str(i), i) for i in range(4)], run_dir=run_dir, executor="ray",
                      cpus=1)
    assert result.ok, result.failures()


def test_actors_get_the_stage_env_pinned_threads_and_their_gpu_share(run_dir):
    pipe = Pipeline("ray-env")

    def seen(x):
        return {v: os.environ.get(v) for v in ("GREETING", "OMP_NUM_THREADS",
                                               "CUDA_VISIBLE_DEVICES")}

    pipe.stage(seen, name="cpu", cpus=1, threads=1, env={"GREETING": "hello"})
    pipe.stage(seen, name="gpu", after="cpu", cpus=0.5, gpus=0.5, threads=2)
    # no env of its own: the actor pins its threads itself, in a process Ray started ahead
    pipe.stage(seen, name="plain", after="gpu", cpus=1, threads=2)
    result = pipe.run(["a"], run_dir=run_dir, executor="ray", cpus=2, gpus=1)
    assert dict(result.outputs("cpu"))["a"] == {"GREETING": "hello", "OMP_NUM_THREADS": "1",
                                         "CUDA_VISIBLE_DEVICES": ""}  # no GPU for it
    gpu = dict(result.outputs("gpu"))["a"]
    assert gpu["OMP_NUM_THREADS"] == "2" and gpu["CUDA_VISIBLE_DEVICES"] == "0"
    assert gpu["GREETING"] is None  # env is per stage
    assert dict(result.outputs("plain"))["a"] == {"GREETING": None, "OMP_NUM_THREADS": "2",
                                           "CUDA_VISIBLE_DEVICES": ""}


def test_a_stage_the_ray_node_cannot_hold_is_refused_with_its_declaration(run_dir):
    # the session's node declares one GPU; two declared to run() fit the budget, not Ray
    pipe = Pipeline("ray-two-gpus")
    pipe.stage(lambda x: x, name="wide", cpus=1, gpus=2)
    with pytest.raises(BudgetError) as raised:
        pipe.run(["a"], run_dir=run_dir, executor="ray", cpus=2, gpus=2)
    # as declared (an actor reserves half its cpus here, where CPUs are lent), and the node's
    assert "stage 'wide' needs cpus=1 gpus=2 on one node" in str(raised.value)
    assert "has cpus=2 gpus=1" in str(raised.value)
    assert not (run_dir / "ledger.db").exists()


DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {pipelines!r})
    import faulty
    faulty.pipe.run(faulty.inputs({n}), run_dir=sys.argv[1], executor="ray", cpus=2)
""")


def test_driver_kill_minus_9_then_resume_on_ray(tmp_path):
    n = 12
    expected_dir = tmp_path / "clean"
    sys.path.insert(0, str(PIPELINES))
    try:
        import faulty
    finally:
        sys.path.remove(str(PIPELINES))
    with faulty.pipe.run(faulty.inputs(n), run_dir=expected_dir, executor="inline") as clean:
        expected = {s: dict(clean.outputs(s)) for s in clean.stages}

    run_dir, log = tmp_path / "killed", tmp_path / "killed.log"
    env = {**os.environ, "FAULT_LOG": str(log), "FAULT_SLEEP": "0.05"}
    code = DRIVER.format(pipelines=str(PIPELINES), n=n)
    # it holds the reduce (FAULT_HOLD), so it cannot finish before the kill
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)],
                            env={**env, "FAULT_HOLD": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while len(read_log(log)) < 25 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the driver finished before it could be killed"
    family = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = _done_rows(run_dir)
    # The actors die with the Ray instance their driver started; no stage code runs on.
    actors = [p for p in family if p.pid in {int(line.split()[2]) for line in read_log(log)}]
    assert actors
    _, alive = psutil.wait_procs(actors, timeout=15)
    assert not alive, f"actors outlived their driver: {alive}"
    calls_at_kill = len(read_log(log))  # what ran later is in the lines past these
    # Ray's dashboard and runtime-env agents outlive a SIGKILLed driver (Ray's
    # behaviour, not ours); end the ones this test started.
    for leftover in family:
        try:
            leftover.kill()
        except psutil.NoSuchProcess:
            pass

    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()[-2000:]
    with open_run(run_dir) as result:
        assert result.ok
        assert {s: dict(result.outputs(s)) for s in result.stages} == expected
    assert done_at_kill, "nothing was recorded before the kill"
    redone = [line for line in read_log(log)[calls_at_kill:]
              if tuple(line.split()[:2]) in done_at_kill]
    assert redone == []


def _done_rows(run_dir: Path) -> set[tuple[str, str]]:
    db = sqlite3.connect(f"file:{run_dir / 'ledger.db'}?mode=ro", uri=True)
    try:
        return {(s, k) for s, k in db.execute(
            "SELECT stage, key FROM items WHERE status IN ('done', 'routed-out')")}
    finally:
        db.close()


def test_large_values_go_to_the_store_url(run_dir, tmp_path):
    store = tmp_path / "shared-store"
    pipe = Pipeline("ray-store")

    @pipe.stage
    def big(n):
        return "x" * (200_000 + n)  # past the inline limit: a file

    result = pipe.run([Item(str(i), i) for i in range(3)], run_dir=run_dir, executor="ray",
                      cpus=2, store=f"file://{store}")
    assert dict(result.outputs("big")) == {str(i): "x" * (200_000 + i) for i in range(3)}
    assert len(list((store / "values").rglob("*.json"))) == 3
    assert not (run_dir / "values").exists()
    with open_run(run_dir) as again:  # another reader finds the store through the run dir
        assert len(dict(again.outputs("big"))["2"]) == 200_002
    with pytest.raises(StoreError, match="keeps its values at"):
        pipe.run(run_dir=run_dir, executor="ray", cpus=2, store=str(tmp_path / "elsewhere"))
    plain = tmp_path / "plain"  # a run dir that kept its values itself cannot move them
    pipe.run(["x"], run_dir=plain, executor="ray", cpus=2)
    with pytest.raises(StoreError, match="'the run directory'"):
        pipe.run(["x"], run_dir=plain, executor="ray", cpus=2, store=str(store))


CLI_PIPELINE = textwrap.dedent("""
    from conveyor import Pipeline

    pipe = Pipeline("cli-ray")

    @pipe.stage(cpus=1)
    def shout(word):
        return word.upper()
""")


def test_cli_joins_a_running_cluster_by_address(ray_instance, tmp_path):
    module = tmp_path / "clipipe.py"
    module.write_text(CLI_PIPELINE)
    address = ray_instance.get_runtime_context().gcs_address
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "conveyor", "run", f"{module}:pipe", "a", "b",
                           "--run-dir", str(run_dir), "--executor", "ray", "--address", address,
                           "--cpus", "1", "-q"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert dict(open_run(run_dir).outputs("shout")) == {"a": "A", "b": "B"}


def run_with_requirement(run_dir: Path, requirement: str):
    """first (driver's env) → which_six (its own env, built by Ray), on two inputs."""
    sys.path.insert(0, str(PIPELINES))
    import envstages

    pipe = Pipeline("ray-env")
    pipe.stage(envstages.same, name="first")
    pipe.stage(envstages.which_six, after="first", requirements=[requirement])
    return pipe.run(["a", "b"], run_dir=run_dir, executor="ray")


@pytest.mark.slow
def test_a_stage_with_its_own_requirements_runs_in_a_ray_pip_environment(run_dir):
    import six

    result = run_with_requirement(run_dir, "six==1.16.0")
    assert result.ok, result.failures()
    outputs = dict(result.outputs("which_six"))
    assert {o["six"] for o in outputs.values()} == {"1.16.0"}
    assert six.__version__ != "1.16.0"  # the driver's own is another release


@pytest.mark.slow
def test_a_requirement_ray_cannot_install_fails_that_stage_items_with_pips_words(run_dir):
    result = run_with_requirement(run_dir, "conveyor-no-such-package-zq")
    assert result.counts["first"]["done"] == 2
    assert result.counts["which_six"]["failed"] == 2
    error = result.failures()[0]["error"]
    assert "actor could not start" in error and "conveyor-no-such-package-zq" in error
