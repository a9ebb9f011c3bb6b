"""Sizes, budgets and the pool that grants resources to workers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.errors import BudgetError, StageDefinitionError
from conveyor.resources import Budget, Grant, Pool, Resources, parse_size


@pytest.mark.parametrize("text,expected", [
    ("512", 512), (512, 512), ("256MiB", 256 * 2**20), ("2GiB", 2 * 2**30),
    ("1.5GB", 1_500_000_000), ("64 KiB", 65536), ("1g", 10**9), (None, 0)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-1", "2 parsecs", True])
def test_parse_size_refuses_nonsense(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_threads_default_to_ceil_cpus():
    assert Resources.declare(cpus=0.5).threads == 1
    assert Resources.declare(cpus=2.5).threads == 3
    assert Resources.declare(cpus=4, threads=1).threads == 1


def test_pool_never_grants_past_the_budget():
    pool = Pool(Budget(cpus=2, ram=2**30, devices=()))
    half = Resources.declare(cpus=0.5, ram="256MiB")
    grants = [pool.acquire(half) for _ in range(4)]
    assert grants == [Grant(cpus_milli=500, ram=2**28, gpu_milli=0, devices=())] * 4
    assert pool.acquire(half) is None  # cpus exhausted
    pool.release(grants[0])
    assert pool.acquire(Resources.declare(cpus=0.5, ram="512MiB")) is None  # ram exhausted
    assert pool.acquire(half) is not None


def test_fractions_do_not_drift():
    pool = Pool(Budget(cpus=0.3, ram=0, devices=()))
    tenth = Resources.declare(cpus=0.1)
    assert all(pool.acquire(tenth) for _ in range(3))
    assert pool.acquire(tenth) is None


def test_fractional_gpus_share_a_device_and_whole_ones_do_not():
    pool = Pool(Budget(cpus=16, ram=0, devices=("0", "1")))
    half = Resources.declare(cpus=1, gpus=0.5)
    a, b = pool.acquire(half), pool.acquire(half)
    assert a.devices == b.devices == ("0",)  # packed onto one device
    assert a.gpu_milli == b.gpu_milli == 500
    whole = pool.acquire(Resources.declare(cpus=1, gpus=1))
    assert whole.devices == ("1",) and whole.gpu_milli == 1000
    assert pool.acquire(half) is None
    assert pool.acquire(Resources.declare(cpus=1, gpus=1)) is None
    pool.release(whole)
    two = pool.acquire(Resources.declare(cpus=1, gpus=2))
    assert two is None  # one device is half-used twice over
    pool.release(a)
    pool.release(b)
    two = pool.acquire(Resources.declare(cpus=1, gpus=2))
    assert two.devices == ("0", "1")


def test_budget_override_and_detection(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # NVML's devices (if any) are hidden
    budget = Budget.detect(cpus=2, ram="8GiB", gpus=2)
    assert budget == Budget(cpus=2.0, ram=8 * 2**30, devices=("0", "1"))  # declared devices
    assert Budget.detect(cpus=2, ram="8GiB") == Budget(cpus=2.0, ram=8 * 2**30, devices=())


def test_detected_cpus_follow_the_affinity_mask():
    """detect_cpus() counts the CPUs this process may run on (capped by a cgroup quota
    where there is one), checked in a child pinned to one CPU."""
    code = ("import os; from conveyor.resources import detect_cpus, Budget; "
            "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "print(detect_cpus(), Budget.detect().cpus)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    quota = Path("/sys/fs/cgroup/cpu.max").read_text().split() \
        if Path("/sys/fs/cgroup/cpu.max").exists() else ["max"]
    one = 1.0 if quota[0] == "max" else min(1.0, int(quota[0]) / int(quota[1]))
    assert out.stdout.split() == [str(one), str(one)]


def test_check_fits_names_the_stage_and_the_shortfall():
    budget = Budget(cpus=2, ram=2**30, devices=())
    budget.check_fits("small", Resources.declare(cpus=2, ram="1GiB"))
    with pytest.raises(BudgetError, match="stage 'big' needs ram=2 GiB but the budget has 1 GiB"):
        budget.check_fits("big", Resources.declare(cpus=1, ram="2GiB"))


def test_custom_resources_are_declared_checked_and_granted_within_the_budget():
    res = Resources.declare(cpus=1, custom={"node_b": 1, "licence": 0.5})
    assert res.custom == (("licence", 0.5), ("node_b", 1.0))  # sorted: equal declarations match
    assert res.describe() == "cpus=1 licence=0.5 node_b=1"
    pool = Pool(Budget(cpus=4, ram=0, custom={"node_b": 1.0, "licence": 1.0}))
    grant = pool.acquire(res)
    assert grant is not None and dict(grant.custom_milli) == {"licence": 500, "node_b": 1000}
    assert pool.acquire(res) is None  # CPUs are free, node_b is not
    pool.release(grant)
    assert pool.acquire(res) is not None


@pytest.mark.parametrize("custom, message", [
    ({"CPU": 1}, "'CPU' is not a custom resource: declare it with cpus="),
    ({"node_b": 0}, "custom resource 'node_b' needs an amount > 0, got 0"),
    ({"node_b": 1.5}, "custom resource 'node_b' above 1 must be whole, got 1.5"),
    ({"": 1}, "a custom resource name must be a non-empty string"),
    (["node_b"], "resources must map custom resource names to amounts"),
])
def test_bad_custom_resources_are_refused_naming_the_cause(custom, message):
    with pytest.raises(StageDefinitionError, match=message):
        Resources.declare(custom=custom)


def test_a_stage_needing_a_custom_resource_does_not_fit_a_budget_without_it(tmp_path):
    from conveyor import Pipeline

    with pytest.raises(BudgetError, match="stage 'pinned' needs the custom resource "
                                          "node_b=1 but the budget has 0; custom resources "
                                          "are Ray's"):
        Budget(cpus=2, ram=2**30).check_fits(
            "pinned", Resources.declare(custom={"node_b": 1}))
    pipe = Pipeline("custom-local")
    pipe.stage(str.upper, name="pinned", resources={"node_b": 1})
    with pytest.raises(BudgetError, match="'pinned' needs the custom resource node_b=1"):
        pipe.run(["a"], run_dir=tmp_path / "run", executor="local")
    assert not (tmp_path / "run").exists()  # refused before anything ran
