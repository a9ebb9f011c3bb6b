"""The service without HTTP: warm workers, idle release, queue limits, faults, shutdown."""

from __future__ import annotations

import os
import time

import pytest

from conveyor import Pipeline
from conveyor.errors import InputError, PipelineError
from conveyor.resources import Budget
from conveyor.serve.service import Closed, Overloaded, Service

pytestmark = pytest.mark.slow


def eventually(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def build() -> Pipeline:
    pipe = Pipeline("svc")

    @pipe.stage(cpus=0.5, min_workers=1)
    def first(x: int) -> int:
        if x == -9:
            os._exit(3)  # the worker dies on this one, every time
        return x + 1

    @pipe.stage(after=first, gpus=1, cpus=0.5, idle_timeout=0.5)
    def holds_gpu(x: int) -> dict:
        return {"x": x, "device": os.environ["CUDA_VISIBLE_DEVICES"], "pid": os.getpid()}

    @pipe.stage(after=first, when=lambda x: False, gpus=1, cpus=0.5)
    def also_gpu(x: int) -> dict:  # reached only when called alone
        return {"x": x, "device": os.environ["CUDA_VISIBLE_DEVICES"]}

    return pipe


@pytest.fixture
def service():
    svc = Service(build(), budget=Budget.detect(cpus=2, gpus=1), max_queue=4).start()
    yield svc
    svc.stop(grace=5)


def test_min_workers_are_set_up_before_any_request(service):
    assert service.wait_warm(60)
    assert service.workers()["first"] == 1 and service.workers()["holds_gpu"] == 0


def test_an_idle_gpu_worker_gives_its_device_back_for_another_stage(service):
    response = service.submit(1).result(60)
    assert response.outputs == [{"stage": "holds_gpu", "key": "q1",
                                 "value": {"x": 2, "device": "0",
                                           "pid": response.outputs[0]["value"]["pid"]}}]
    eventually(lambda: service.workers()["holds_gpu"] == 0)  # idle_timeout=0.5 s
    # The only device is free again: a stage that needs it can start
    alone = service.submit(5, stage="also_gpu").result(60)
    assert alone.outputs[0]["value"] == {"x": 5, "device": "0"}
    assert set(alone.timings) == {"also_gpu"}


def test_a_full_queue_refuses_and_a_stopped_service_is_closed(service):
    service.wait_warm(60)
    futures = service.submit_many([1, 2, 3])
    with pytest.raises(Overloaded) as refused:
        service.submit_many([4, 5])  # 3 + 2 > max_queue=4: none is queued
    # No request answered yet, so no answer rate to go by: the least advice, one second
    assert refused.value.retry_after == 1
    assert str(refused.value) == "overloaded; retry after 1 s"
    assert sorted(f.result(60).outputs[0]["value"]["x"] for f in futures) == [2, 3, 4]
    service.stop(grace=5)
    with pytest.raises(Closed):
        service.submit(1)


def test_an_input_that_cannot_be_encoded_is_refused_and_breaks_nothing(service):
    with pytest.raises(InputError, match="cannot be encoded as JSON: Integer exceeds 64-bit"):
        service.submit(2**70)
    assert service.submit(1).result(60).ok and not service.broken


def test_a_request_that_kills_its_worker_fails_alone(service):
    bad = service.submit(-9)
    good = service.submit(10)
    failed = bad.result(60)
    assert failed.failures[0]["stage"] == "first"
    assert "exited with code 3" in failed.failures[0]["error"]
    assert good.result(60).outputs[0]["value"]["x"] == 11
    assert service.submit(20).result(60).ok  # a replacement worker took over


def test_a_pipeline_with_a_reduce_cannot_be_served():
    pipe = Pipeline("r")

    @pipe.stage
    def a(x):
        return x

    @pipe.reduce(after=a)
    def total(xs):
        return sum(xs)

    with pytest.raises(PipelineError, match="stage 'total' is a reduce"):
        Service(pipe)


def test_a_chain_fused_into_one_worker_answers_each_request_once_at_its_end():
    pipe = Pipeline("fused")

    @pipe.stage(cpus=0.5)
    def a(x: int) -> int:
        return x + 1

    @pipe.stage(after=a, cpus=0.5)
    def b(x: int) -> int:  # same resources, one input: fused with a
        return x * 10

    @pipe.stage(after=b, cpus=0.5, batch_size=4, batch_wait=0.01)
    def c(xs: list[int]) -> list[int]:
        return [x + 5 for x in xs]

    svc = Service(pipe, budget=Budget.detect(cpus=2)).start()
    try:
        futures = svc.submit_many(list(range(10)))
        answers = [f.result(60) for f in futures]
        assert [r.outputs for r in answers] == [
            [{"stage": "c", "key": f"q{i + 1}", "value": (i + 1) * 10 + 5}] for i in range(10)]
        assert all(set(r.timings) == {"a", "b", "c"} for r in answers)
        assert svc.submit(7).result(60).ok and not svc.broken
    finally:
        svc.stop(grace=5)
