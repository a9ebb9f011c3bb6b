"""The scheduling policy's decisions, as pure functions and on a fake clock (no sleeps).

fuse() decides which stages share a worker; plan() how many workers each
group keeps; lease_order()/should_yield() and WorkerPool which workers hold
the CPUs. The pool is driven with the in-process executor and explicit
timestamps, so every decision is checked without waiting.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor import Pipeline
from conveyor.observe.events import EventLog
from conveyor.executors.inline import InlineExecutor
from conveyor.engine.fusion import fuse
from conveyor.resources import Budget, Resources
from conveyor.worker.runner import StageSpec, WorkerSpec
from conveyor.engine.scheduler import Load, lease_order, plan, should_yield
from conveyor.engine.workerpool import QUANTUM, WorkerPool

CPU1 = Resources.declare(cpus=1)


def load(name: str, **kw) -> Load:
    kw.setdefault("resources", CPU1)
    kw.setdefault("ready", 0)
    kw.setdefault("running", 0)
    return Load(name=name, **kw)


# -- fusion ------------------------------------------------------------------------------------

def test_a_linear_chain_of_compatible_stages_is_one_group():
    pipe = Pipeline("p")
    pipe.stage(lambda x: x, name="a")
    pipe.stage(lambda x: x, name="b", after="a")
    pipe.stage(lambda x: x, name="c", after="b")
    assert [g.stages for g in fuse(pipe)] == [("a", "b", "c")]


def test_what_breaks_a_chain():
    pipe = Pipeline("p")
    pipe.stage(lambda x: x, name="a")
    pipe.stage(lambda x: x, name="gpu", after="a", gpus=1)  # other resources
    pipe.stage(lambda x: x, name="b", after="gpu")
    pipe.stage(lambda xs: xs, name="batch", after="b", batch_size=4)  # batched
    pipe.stage(lambda x: x, name="slow", after="batch", timeout=5)  # a timeout
    pipe.stage(lambda x: x, name="left", after="slow")  # fan-out of routes:
    pipe.stage(lambda x: x, name="right", after="slow")
    pipe.stage(lambda x: x, name="join", after=["left", "right"])  # fan-in
    pipe.stage(lambda x: x, name="tail", after="join")
    pipe.reduce(lambda v: 0, name="total", after="tail")
    groups = [g.stages for g in fuse(pipe)]
    assert groups == [("a",), ("gpu",), ("b",), ("batch",), ("slow",), ("left",), ("right",),
                      ("join", "tail"), ("total",)]


def test_groups_come_in_graph_order():
    pipe = Pipeline("p")
    pipe.stage(lambda x: x, name="a")
    pipe.stage(lambda x: x, name="b", after="a", cpus=2)
    pipe.stage(lambda x: x, name="c", after="b", cpus=2)
    assert [g.name for g in fuse(pipe)] == ["a", "b+c"]


# -- plan: live workers ----------------------------------------------------------------------------

def test_plan_gives_slots_to_the_group_with_the_most_work_per_worker():
    budget = Budget(cpus=4, ram=0)
    targets = plan([load("cheap", ready=100, service=0.001),
                    load("costly", ready=100, service=0.030)], budget)
    assert targets == {"cheap": 1, "costly": 3}


def test_plan_never_plans_past_the_budget_and_honours_caps():
    budget = Budget(cpus=3, ram=4 * 2**30, devices=("0",))
    gpu = Resources.declare(cpus=1, ram="1GiB", gpus=1)
    targets = plan([load("embed", resources=gpu, ready=50, service=0.02),
                    load("ocr", resources=Resources.declare(cpus=1, ram="2GiB"), ready=50,
                         service=0.5, cap=1),
                    load("chunk", ready=50, service=0.001)], budget)
    assert targets["embed"] == 1  # one device
    assert targets["ocr"] == 1  # its cap
    assert sum(targets.values()) <= 3


def test_a_few_quick_items_do_not_justify_more_workers():
    quick = load("quick", ready=8, service=0.005)  # 40 ms of work
    slow = load("slow", ready=8, service=0.5)  # 4 s of work
    targets = plan([quick, slow], Budget(cpus=16, ram=0))
    assert targets == {"quick": 1, "slow": 4}


def test_plan_uses_no_more_workers_than_there_is_work():
    targets = plan([load("a", ready=1), load("b", ready=0, running=3, batch=2)],
                   Budget(cpus=8, ram=0))
    assert targets == {"a": 1, "b": 2}


def test_plan_starts_a_worker_before_work_arrives_and_stops_for_a_finished_group():
    targets = plan([load("upstream", ready=10, service=0.01),
                    load("downstream", expected=True), load("done")], Budget(cpus=4, ram=0))
    assert targets["downstream"] == 1 and targets["done"] == 0


def test_work_in_hand_comes_before_starting_workers_ahead_of_time():
    budget = Budget(cpus=1, ram=0)
    targets = plan([load("root", ready=5), load("next", expected=True, depth=1),
                    load("last", expected=True, depth=2)], budget)
    assert targets == {"root": 1, "next": 0, "last": 0}
    targets = plan([load("root", ready=5), load("next", expected=True, depth=1),
                    load("last", expected=True, depth=2)], Budget(cpus=2, ram=0))
    assert targets == {"root": 1, "next": 1, "last": 0}  # the nearest is set up first


def test_warm_workers_are_kept_whatever_the_work():
    targets = plan([load("model", floor=2), load("busy", ready=100, service=1.0)],
                   Budget(cpus=4, ram=0))
    assert targets == {"model": 2, "busy": 2}


def test_a_throttled_group_keeps_only_what_its_work_in_flight_needs():
    targets = plan([load("producer", ready=1000, running=2, throttled=True, service=0.001),
                    load("consumer", ready=400, service=0.01)], Budget(cpus=8, ram=0))
    assert targets["producer"] == 1  # what its two quick items in flight need, no more
    assert targets["consumer"] == 4  # one per second of work in hand


# -- leases: who runs now ---------------------------------------------------------------------------

def test_lease_order_is_most_urgent_first_and_skips_throttled_or_idle_groups():
    loads = [load("root", ready=500, in_fill=1.0, out_fill=0.9, workers=1),
             load("middle", ready=200, in_fill=0.2, out_fill=0.0, depth=1, workers=1),
             load("sink", ready=50, in_fill=0.05, depth=2, workers=1),
             load("blocked", ready=10, throttled=True, depth=3, workers=1),
             load("empty", ready=0, depth=4, workers=1)]
    assert [l.name for l in lease_order(loads)] == ["middle", "root", "sink"]


def test_a_group_without_a_worker_comes_first():
    loads = [load("busy", ready=500, in_fill=1.0, workers=2),
             load("new", ready=3, in_fill=0.01, workers=0, depth=1)]
    assert [l.name for l in lease_order(loads)] == ["new", "busy"]


def test_ties_go_downstream():
    loads = [load("up", ready=5, in_fill=0.5, depth=0, workers=1),
             load("down", ready=5, in_fill=0.5, depth=1, workers=1)]
    assert [l.name for l in lease_order(loads)] == ["down", "up"]


def test_should_yield_needs_a_clear_margin_or_a_holder_with_nothing_to_do():
    urgent = load("urgent", ready=10, in_fill=0.9, workers=1)
    assert should_yield(urgent, load("calm", ready=10, in_fill=0.5))
    assert not should_yield(urgent, load("close", ready=10, in_fill=0.88))
    assert should_yield(urgent, load("stuck", ready=10, in_fill=0.9, throttled=True))
    assert should_yield(urgent, load("dry", ready=0, in_fill=0.9))
    newcomer = load("new", ready=1, in_fill=0.01, workers=0)
    assert should_yield(newcomer, load("busy", ready=500, in_fill=1.0))


# -- the pool: leases on a fake clock -----------------------------------------------------------------

def spec(name: str, tmp: Path, **options) -> WorkerSpec:
    pipe = Pipeline("p")
    pipe.stage(lambda x: x, name=name, **options)
    return WorkerSpec(name, (StageSpec(pipe[name], ()),), str(tmp))


@pytest.fixture
def pool(tmp_path: Path) -> WorkerPool:
    return WorkerPool(InlineExecutor(), Budget(cpus=2, ram=0, devices=("0",)),
                      EventLog(tmp_path))


def ready(pool: WorkerPool) -> None:
    for event in pool.executor.poll(0):
        pool.workers[event.worker].ready = True


def leased_cpus(pool: WorkerPool) -> float:
    return sum(w.resources.cpus for w in pool.workers.values() if w.leased)


def test_starting_takes_a_lease_and_the_live_ceiling_is_a_multiple_of_the_cpus(pool, tmp_path):
    a = spec("a", tmp_path)
    assert pool.start(a, 0.0) and pool.start(a, 0.0)
    assert pool.start(a, 0.0) is None  # both CPUs are leased while they set up
    ready(pool)
    pool.assign_leases({"a": load("a", ready=0)}, 1.0)  # idle: leases go back
    assert leased_cpus(pool) == 0
    assert pool.start(a, 1.0) and pool.start(a, 1.0)
    assert pool.start(a, 1.0) is None  # 4 live = LIVE_FACTOR x 2 CPUs


def test_leases_go_to_the_most_urgent_group_within_the_budget(pool, tmp_path):
    for name in ("a", "b"):
        for _ in range(2):
            pool.start(spec(name, tmp_path), 0.0)
            ready(pool)
            pool.assign_leases({"a": load("a"), "b": load("b")}, 0.0)
    loads = {"a": load("a", ready=100, in_fill=1.0, out_fill=0.9),
             "b": load("b", ready=100, in_fill=0.6, depth=1)}
    pool.assign_leases(loads, 1.0)
    assert {w.group for w in pool.workers.values() if w.leased} == {"b"}
    assert leased_cpus(pool) == 2


def test_a_waiting_urgent_group_makes_a_long_holder_yield(pool, tmp_path):
    a = [pool.start(spec("a", tmp_path), 0.0) for _ in range(2)]
    ready(pool)
    for worker in a:
        worker.inflight = {1: None}  # both busy, both CPUs leased
    assert pool.start(spec("b", tmp_path), 0.0) is None  # b cannot start without a CPU
    loads = {"a": load("a", ready=100, in_fill=0.3, workers=2),
             "b": load("b", ready=50, in_fill=0.9, workers=0)}
    pool.assign_leases(loads, QUANTUM / 2)
    assert not any(w.expiring for w in a)  # not before a quantum
    pool.assign_leases(loads, QUANTUM * 2)
    expiring = [w for w in a if w.expiring]
    assert len(expiring) == 1 and expiring[0].leased  # one CPU is enough; it finishes first
    expiring[0].inflight = {}
    pool.assign_leases(loads, QUANTUM * 2)
    assert not expiring[0].leased
    assert pool.start(spec("b", tmp_path), QUANTUM * 2) is not None
    assert leased_cpus(pool) <= 2


def test_a_gpu_worker_keeps_its_lease(pool, tmp_path):
    pool.start(spec("embed", tmp_path, gpus=1), 0.0)
    ready(pool)
    pool.assign_leases({"embed": load("embed", ready=0)}, 5.0)
    (worker,) = pool.workers.values()
    assert worker.pinned and worker.leased
