"""The Ray executor on a cluster of several Ray nodes on this host (Ray's
``cluster_utils.Cluster``: a head and worker nodes, each its own raylet with its
own resources): stages placed by resources across nodes, a stage pinned to a
node's custom resource, a node lost mid-run, large values in an S3 store written
on one node and read by the driver.

The session's local Ray instance (conftest) is set aside while these run: a
process joins one Ray cluster at a time. Nodes have one CPU each (CI machines
have two cores); node deaths are detected in about a second here (Ray's default
health check takes ~15 s).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Iterator

import pytest

from conftest import start_session_ray
from conveyor import Item, Pipeline
from conveyor.errors import BudgetError
from conveyor.observe.events import read_events

pytestmark = [pytest.mark.ray, pytest.mark.slow]

FAST_DEATH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
              "health_check_failure_threshold": 3}


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[object, object, object]]:
    """(cluster, head node, node_b): a head and a node that declares ``node_b``, one CPU each."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    session = ray.is_initialized()
    if session:
        ray.shutdown()
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "_system_config": FAST_DEATH})
    try:
        node_b = cluster.add_node(num_cpus=1, resources={"node_b": 1})
        cluster.wait_for_nodes()
        yield cluster, cluster.head_node, node_b
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        if session:
            start_session_ray(ray)


def on_node(value):
    """The value and the Ray node this call ran on."""
    import ray

    return {"value": value, "node": ray.get_runtime_context().get_node_id()}


def test_stages_are_placed_by_their_resources_across_nodes(cluster, run_dir, tmp_path):
    cl, head, node_b = cluster
    marks = tmp_path / "marks"
    marks.mkdir()
    pipe = Pipeline("ray-nodes")

    @pipe.stage(cpus=1)
    def spread(x, ctx):
        """Wait until calls run on two nodes at once (two one-CPU workers: one per node)."""
        here = on_node(x)
        (marks / f"{ctx.key}@{here['node']}").touch()
        deadline = time.time() + 30  # then return, and the test says what ran where
        while len({p.name.split("@")[1] for p in marks.iterdir()}) < 2 \
                and time.time() < deadline:
            time.sleep(0.02)
        return here

    result = pipe.run([Item(f"k{i}", i) for i in range(4)], run_dir=run_dir, executor="ray",
                      address=cl.address)
    assert result.ok, result.failures()
    # two one-CPU workers (a budget of two CPUs) cannot share a one-CPU node
    assert {v["node"] for v in dict(result.outputs("spread")).values()} == \
        {head.node_id, node_b.node_id}

    # Its own run: in the one above, a worker of a downstream stage would take a CPU
    pipe = Pipeline("ray-pinned")
    pipe.stage(on_node, name="anywhere", cpus=1)
    pipe.stage(lambda v: on_node(v["value"]), name="pinned", after="anywhere", cpus=1,
               resources={"node_b": 1})
    result = pipe.run([Item(f"k{i}", i) for i in range(4)], run_dir=tmp_path / "pinned",
                      executor="ray", address=cl.address)
    assert result.ok, result.failures()
    pinned = dict(result.outputs("pinned"))
    assert {k: v["value"] for k, v in pinned.items()} == {f"k{i}": i for i in range(4)}
    # the only node with node_b ran every pinned call
    assert {v["node"] for v in pinned.values()} == {node_b.node_id}


def test_a_stage_no_node_can_hold_is_refused_by_name_instead_of_waiting(cluster, run_dir):
    cl, head, node_b = cluster
    # two one-CPU nodes: cpus=2 fits the cluster's budget (their sum), no single node
    pipe = Pipeline("ray-too-big")
    pipe.stage(on_node, name="small", cpus=1)
    pipe.stage(on_node, name="wide", after="small", cpus=2)
    with pytest.raises(BudgetError) as raised:
        pipe.run([Item("k", 1)], run_dir=run_dir, executor="ray", address=cl.address)
    message = str(raised.value)
    assert "stage 'wide' needs cpus=2 on one node" in message
    assert message.count(" has cpus=1") == 2, message  # what each node has
    assert not (run_dir / "ledger.db").exists()  # refused before anything is written

    # a declared GPU count the cluster does not have (gpus= to run())
    pipe = Pipeline("ray-no-gpu")
    pipe.stage(on_node, name="embed", gpus=1)
    with pytest.raises(BudgetError, match=r"stage 'embed' needs .*gpus=1 on one node"):
        pipe.run([Item("k", 1)], run_dir=run_dir, executor="ray", address=cl.address,
                 gpus=1)


def test_a_stage_whose_only_node_is_lost_fails_with_why_instead_of_waiting(
        cluster, run_dir, tmp_path, monkeypatch):
    import conveyor.executors.ray as ray_executor

    monkeypatch.setattr(ray_executor, "PLACE_SECONDS", 1.0)
    cl, head, node_b = cluster
    only = cl.add_node(num_cpus=1, resources={"node_c": 1})
    cl.wait_for_nodes()
    marks = tmp_path / "marks"
    marks.mkdir()
    pipe = Pipeline("ray-node-c-lost")

    @pipe.stage(cpus=1, resources={"node_c": 1}, retries=1, retry_backoff=0.05)
    def pinned(x, ctx):
        (marks / ctx.key).touch()
        threading.Event().wait()  # in flight on node_c until it is gone

    removed = threading.Event()

    def kill_the_node() -> None:
        while not removed.is_set():
            if any(marks.iterdir()):
                cl.remove_node(only, allow_graceful=False)
                removed.set()
            time.sleep(0.02)

    killer = threading.Thread(target=kill_the_node, daemon=True)
    killer.start()
    try:
        result = pipe.run([Item(f"k{i}", i) for i in range(3)], run_dir=run_dir,
                          executor="ray", address=cl.address)
    finally:
        if not removed.is_set():
            removed.set()
            cl.remove_node(only, allow_graceful=False)
    killer.join()
    # the run ended: every item failed with why (the one that was running retried first)
    assert result.counts["pinned"]["failed"] == 3
    errors = [f["error"] for f in result.failures()]
    why = "stage 'pinned' needs cpus=1 node_c=1 on one node, and no live node"
    assert len(errors) == 3 and all(why in e for e in errors), errors


def test_a_node_lost_mid_run_loses_no_item(cluster, run_dir, tmp_path):
    cl, head, node_b = cluster
    victim = cl.add_node(num_cpus=1)
    cl.wait_for_nodes()
    marks = tmp_path / "marks"
    marks.mkdir()
    doomed = victim.node_id
    pipe = Pipeline("ray-node-lost")

    @pipe.stage(cpus=1, retries=2, retry_backoff=0.05)
    def work(x, ctx):
        import ray

        node = ray.get_runtime_context().get_node_id()
        (marks / f"{ctx.key}@{node}").touch()
        if node == doomed:
            threading.Event().wait()  # in flight here until the node is gone
        # Calls elsewhere wait until one is in flight on the victim: a worker set up
        # first would otherwise take every item before the victim's actor is ready.
        deadline = time.monotonic() + 60
        while not any(p.name.endswith(doomed) for p in marks.iterdir()):
            if time.monotonic() > deadline:
                raise TimeoutError("no call ran on the victim node")
            time.sleep(0.01)
        return node

    removed = threading.Event()

    def kill_the_node() -> None:
        """Remove the victim node once a call is running on it."""
        while not removed.is_set():
            if any(p.name.endswith(doomed) for p in marks.iterdir()):
                cl.remove_node(victim, allow_graceful=False)
                removed.set()
            time.sleep(0.02)

    killer = threading.Thread(target=kill_the_node, daemon=True)
    killer.start()
    n = 6
    try:
        result = pipe.run([Item(f"k{i}", i) for i in range(n)], run_dir=run_dir,
                          executor="ray", address=cl.address)
    finally:
        if not removed.is_set():
            removed.set()  # stops the killer; the run ended without reaching the victim
            cl.remove_node(victim, allow_graceful=False)
    killer.join()
    assert result.ok, result.failures()
    outputs = dict(result.outputs("work"))
    assert sorted(outputs) == [f"k{i}" for i in range(n)]
    assert doomed not in outputs.values()
    started = [p.name.split("@") for p in marks.iterdir()]
    on_victim = {key for key, node in started if node == doomed}
    assert on_victim, "no call ran on the victim node"
    for key in on_victim:  # ran again on a node that lived, which recorded it
        assert outputs[key] in {node for k, node in started if k == key and node != doomed}
    with sqlite3.connect(run_dir / "ledger.db") as db:
        rows = db.execute("SELECT key, status, attempts FROM items WHERE stage = 'work'").fetchall()
    assert sorted((k, s) for k, s, _ in rows) == [(f"k{i}", "done") for i in range(n)]
    # one death costs an item at most the attempt it was running
    assert all(a <= 2 for _, _, a in rows), rows
    exits = [e["reason"] for e in read_events(run_dir) if e["event"] == "worker_exit"]
    assert any(reason.startswith("died") for reason in exits), exits


def test_values_written_on_another_node_reach_the_driver_through_an_s3_store(cluster, run_dir,
                                                                              s3):
    cl, head, node_b = cluster
    pipe = Pipeline("ray-nodes-store")

    # The actors run in the nodes' environment, not the test's: the S3 settings go in env.
    @pipe.stage(cpus=1, resources={"node_b": 1}, env=s3["env"])
    def big(n):
        return {"text": "x" * (200_000 + n), **on_node(n)}  # past the inline limit: a file

    store = f"s3://{s3['bucket']}/store"
    result = pipe.run([Item(str(i), i) for i in range(3)], run_dir=run_dir, executor="ray",
                      address=cl.address, store=store)
    assert result.ok, result.failures()
    outputs = dict(result.outputs("big"))
    assert {k: len(v["text"]) for k, v in outputs.items()} == {str(i): 200_000 + i
                                                             for i in range(3)}
    assert {v["node"] for v in outputs.values()} == {node_b.node_id}
    assert len([p for p in s3["fs"].find(store) if p.endswith(".json")]) == 3
    assert not (run_dir / "values").exists()
