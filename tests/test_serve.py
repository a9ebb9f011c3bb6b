"""``conveyor serve`` as a client sees it: a real server process on 127.0.0.1, real HTTP.

The pipeline is tests/pipelines/served.py: a typed CPU stage, a batch stage
holding a declared GPU, a one-word branch that skips it, and a CPU stage after.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import httpx
import psutil
import pytest
from helpers import read_log

ROOT = Path(__file__).resolve().parents[1]
SERVED = ROOT / "tests" / "pipelines" / "served.py"

pytestmark = pytest.mark.slow


class Server:
    """``conveyor serve`` in a process of its own, stopped with SIGTERM.

    ``folder`` becomes the pipeline's ``$SERVED_DIR``: the model stage logs its
    calls there and holds a request with ``hold: NAME`` until :meth:`release`.
    """

    def __init__(self, spec: str, *options: str, folder: Path | None = None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = folder
        env = {**os.environ, **({"SERVED_DIR": str(folder)} if folder else {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "serve", spec, "--port", str(self.port), *options],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.proc.stdout.read()}")  # type: ignore
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("server did not become healthy")

    def terminate(self, timeout: float = 60.0) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out

    def calls(self, ids: set[int]) -> list[tuple[str, list[int]]]:
        """The model stage's ``start``/``end`` of each call holding any of ``ids``, in order."""
        assert self.folder is not None
        logged = [(event, [int(i) for i in held.split(",")])
                  for event, held in (line.split() for line in read_log(self.folder / "calls.log"))]
        return [(event, held) for event, held in logged if ids & set(held)]

    def release(self, gate: str) -> None:
        """Let the model stage go on with the requests held by ``gate``."""
        assert self.folder is not None
        (self.folder / gate).touch()

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=30).json()

    def metrics(self) -> dict[str, float]:
        """Every sample of ``/metrics``: ``'name{labels}'`` to its value."""
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        return {name: float(value) for name, value in
                (line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))}


def eventually(check: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    """Poll ``check`` until it holds (the deadline only keeps a broken server from hanging)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(f"{SERVED}:pipe", "--cpus", "2", "--gpus", "1", "--timeout", "10",
               "--max-queue", "24", folder=tmp_path_factory.mktemp("served"))
    try:
        s.wait_ready()
        yield s
    finally:
        s.terminate()


def post(server: Server, path: str, body: object, **params: object) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, params=params, timeout=30)


def only_output(response: httpx.Response) -> dict:
    outputs = response.json()["outputs"]
    assert len(outputs) == 1, outputs
    return outputs[0]


def test_a_request_runs_every_stage_on_its_path_and_says_what_each_cost(server):
    response = post(server, "/run", {"text": "hello there", "id": 7})
    assert response.status_code == 200, response.text
    out = only_output(response)
    assert out["stage"] == "post"
    assert out["value"] == {"id": 7, "path": "model", "batch": 1, "device": "0",
                            "upper": "HELLO THERE"}
    body = response.json()
    assert set(body["timings"]) == set(body["cost"]) == {"prep", "model", "post"}
    assert body["timings"]["model"] >= 0.02  # the batch's sleep, all of it this request's
    assert body["cost"]["model"] > body["cost"]["post"]  # a GPU-hour costs more
    assert body["cost_total"] == pytest.approx(sum(body["cost"].values()))
    timing = response.headers["Server-Timing"]
    assert all(f"{stage};dur=" in timing for stage in ("prep", "model", "post", "total"))
    assert float(response.headers["X-Conveyor-Cost"]) == pytest.approx(body["cost_total"],
                                                                       abs=1e-9)


def test_an_input_no_gpu_branch_accepts_never_reaches_the_gpu_stage(server):
    response = post(server, "/run", {"text": "hello", "id": 1})
    assert response.status_code == 200
    assert only_output(response)["value"]["path"] == "short"
    assert "model" not in response.json()["timings"]


@pytest.mark.parametrize("body, field", [
    ({"text": ""}, ["body", "text"]),
    ({"id": 3}, ["body", "text"]),
    ({"text": "two words", "sleep": "long"}, ["body", "sleep"]),
    ({"text": "two words", "sleep": 99}, ["body", "sleep"]),
    ([1, 2], ["body"]),
    ({"text": "too big", "id": 2**70}, ["body"]),  # valid for pydantic, not for JSON transport
])
def test_an_invalid_body_is_a_422_naming_the_field(server, body, field):
    response = post(server, "/run", body)
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [field]


@pytest.mark.parametrize("timeout", [0, 0.0009, -1])
def test_a_timeout_below_a_millisecond_is_a_422_not_a_504(server, timeout):
    response = post(server, "/run", {"text": "hello there", "id": 8}, timeout=timeout)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["query", "timeout"]
    assert "0.001" in error["msg"]


def test_a_failing_stage_is_a_500_with_its_name_and_message_and_no_traceback(server):
    response = post(server, "/run", {"text": "bad input", "fail": True})
    assert response.status_code == 500
    body = response.json()
    assert body["stage"] == "model"
    assert body["error"] == "RuntimeError: model cannot read 'bad input'"
    assert "traceback" not in body and "Traceback" not in response.text


def test_a_request_past_its_timeout_is_a_504_its_work_still_runs_once_and_is_dropped(server):
    assert server.health()["inflight"] == 0
    before = server.metrics()
    response = post(server, "/run", {"text": "slow one", "id": 504, "hold": "timeout"},
                    timeout=0.5)
    assert response.status_code == 504
    assert response.json() == {"error": "timed out after 0.5 s"}
    # Answered while its work is held in the model stage, which is not interrupted:
    # the work stays in the service, and the next request queues behind it.
    eventually(lambda: server.calls({504}) == [("start", [504])], "the model holds the request")
    assert server.health()["inflight"] == 1
    with ThreadPoolExecutor(1) as pool:
        after = pool.submit(post, server, "/run", {"text": "after that", "id": 505})
        eventually(lambda: server.health()["inflight"] == 2, "the next request is taken")
        server.release("timeout")
        answer = after.result()
    assert answer.status_code == 200, answer.text
    assert only_output(answer)["value"] == {"id": 505, "path": "model", "batch": 1,
                                            "device": "0", "upper": "AFTER THAT"}
    # The timed-out request's work ran to the end of the pipeline once, and was dropped.
    eventually(lambda: server.health()["inflight"] == 0, "the timed-out work is done")
    assert server.calls({504, 505}) == [("start", [504]), ("end", [504]),
                                        ("start", [505]), ("end", [505])]
    now = server.metrics()
    for sample, more in (('conveyor_stage_call_seconds_count{stage="prep"}', 2),
                         ('conveyor_stage_call_seconds_count{stage="model"}', 2),
                         ('conveyor_stage_call_seconds_count{stage="post"}', 2),
                         ('conveyor_http_requests_total{code="504",endpoint="/run"}', 1)):
        assert now[sample] - before.get(sample, 0.0) == more, sample


def test_one_stage_alone(server):
    response = post(server, "/stages/prep", {"text": " spaced  out ", "id": 4})
    assert response.status_code == 200
    out = only_output(response)
    assert out["stage"] == "prep" and out["value"]["text"] == "spaced  out"
    assert set(response.json()["timings"]) == {"prep"}
    bad = post(server, "/stages/post", {"id": "x"})  # post takes a Tagged
    assert bad.status_code == 422


def test_batch_endpoint_answers_each_input_in_order(server):
    response = post(server, "/run/batch", [{"text": "first one", "id": 1}, {"text": "solo", "id": 2},
                                           {"text": "broken one", "id": 3, "fail": True}])
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 200, 500]
    assert results[0]["result"]["outputs"][0]["value"]["id"] == 1
    assert results[1]["result"]["outputs"][0]["value"]["path"] == "short"
    assert results[2]["error"]["stage"] == "model"


def test_concurrent_clients_share_batches_and_each_gets_its_own_answer(server):
    async def load() -> list[tuple[int, httpx.Response]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            async def one(i: int) -> tuple[int, httpx.Response]:
                return i, await client.post("/run", json={"text": f"request number {i}",
                                                          "id": i, "fail": i % 17 == 0})
            answers = []
            for start in range(0, 60, 20):  # 20 at a time: within the server's queue of 24
                answers += await asyncio.gather(*(one(i) for i in range(start, start + 20)))
            return answers

    answers = asyncio.run(asyncio.wait_for(load(), 120))
    assert len(answers) == 60
    batches = []
    for i, response in answers:
        if i % 17 == 0:  # the failing ones fail alone; their batch-mates are answered
            assert response.status_code == 500 and f"'request number {i}'" in response.text
            continue
        assert response.status_code == 200, response.text
        value = only_output(response)["value"]
        assert value["id"] == i and value["upper"] == f"REQUEST NUMBER {i}"
        batches.append(value["batch"])
    assert max(batches) > 1, batches
    metrics = httpx.get(f"{server.url}/metrics").text
    big = [line for line in metrics.splitlines()
           if line.startswith('conveyor_stage_batch_size_bucket{le="1.0",stage="model"}')]
    calls = [line for line in metrics.splitlines()
             if line.startswith('conveyor_stage_batch_size_count{stage="model"}')]
    assert float(big[0].split()[-1]) < float(calls[0].split()[-1])  # some calls held more


def test_a_full_queue_answers_503_with_retry_after(server):
    assert server.health()["inflight"] == 0
    ids = range(1000, 1040)
    with ThreadPoolExecutor(len(ids)) as pool:
        calls = {i: pool.submit(post, server, "/run", {"text": f"flood {i}", "id": i,
                                                        "hold": "flood"}) for i in ids}
        # Held in the model stage, none of the taken requests can be answered yet: once
        # each request is either taken or refused, the queue (--max-queue 24) is full.
        eventually(lambda: server.health()["inflight"] + sum(c.done() for c in calls.values())
                   == len(ids), "every request taken or refused")
        refused = {i: c.result() for i, c in calls.items() if c.done()}
        assert (len(refused), server.health()["inflight"]) == (16, 24)
        server.release("flood")
        taken = {i: c.result() for i, c in calls.items() if i not in refused}
    assert {r.status_code for r in refused.values()} == {503}
    # Every refusal saw the same full queue and answer rate (nothing was answered between
    # them), so each gives the same advice: at least a second, in the header and the body.
    advice = {(r.headers["Retry-After"], r.json()["error"]) for r in refused.values()}
    assert len(advice) == 1, advice
    [(seconds, error)] = advice
    assert int(seconds) >= 1 and error == f"overloaded; retry after {seconds} s"
    assert len(taken) == 24
    for i, response in taken.items():
        assert response.status_code == 200, response.text
        assert only_output(response)["value"]["upper"] == f"FLOOD {i}"
    assert not server.calls(set(refused))  # a refused request never reached a stage


def test_metrics_count_requests_stages_workers_and_cost(server):
    post(server, "/run", {"text": "count me"})
    post(server, "/run", {"text": ""})
    text = httpx.get(f"{server.url}/metrics").text
    for needle in ('conveyor_http_requests_total{code="200",endpoint="/run"}',
                   'conveyor_http_requests_total{code="422",endpoint="/run"}',
                   'conveyor_http_request_seconds_bucket{endpoint="/run"',
                   'conveyor_stage_request_seconds_count{stage="model"}',
                   'conveyor_stage_call_seconds_count{stage="prep"}',
                   'conveyor_stage_cost_dollars_total{stage="model"}',
                   'conveyor_workers{stage="model"} 1.0',
                   'conveyor_queue_depth{stage="prep"}',
                   'conveyor_requests_in_flight 0.0'):
        assert needle in text, needle


def test_openapi_names_the_stage_models(server):
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert {"Query", "Tagged", "RunResponse", "ErrorBody"} <= set(schema["components"]["schemas"])
    run = schema["paths"]["/run"]["post"]
    assert run["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Query"}
    assert {"/run/batch", "/stages/prep", "/stages/model", "/stages/short", "/stages/post",
            "/health", "/metrics"} <= set(schema["paths"])
    assert httpx.get(f"{server.url}/docs").status_code == 200


def test_debug_puts_the_traceback_in_a_500():
    s = Server(f"{SERVED}:pipe", "--cpus", "2", "--gpus", "1", "--debug")
    try:
        s.wait_ready()
        response = post(s, "/run", {"text": "bad input", "fail": True})
        assert response.status_code == 500
        body = response.json()
        trace = body.pop("traceback")
        assert body == {"error": "RuntimeError: model cannot read 'bad input'", "stage": "model",
                        "key": "q1"}
        raising = 'raise RuntimeError(f"model cannot read {t.text!r}")'
        line = SERVED.read_text().splitlines().index(f"                {raising}") + 1
        assert trace.startswith("Traceback (most recent call last):\n")
        assert f'File "{SERVED}", line {line}, in model\n' in trace
        assert trace.endswith(f"{raising}\nRuntimeError: model cannot read 'bad input'\n")
    finally:
        s.terminate()


def test_sigterm_answers_requests_in_flight_refuses_new_ones_then_stops_every_worker(tmp_path):
    s = Server(f"{SERVED}:pipe", "--cpus", "2", "--gpus", "1", "--grace", "20", folder=tmp_path)
    try:
        s.wait_ready()
        with ThreadPoolExecutor(5) as pool:
            calls = [pool.submit(post, s, "/run", {"text": f"late {i}", "id": i, "hold": "stop"})
                     for i in range(5)]
            eventually(lambda: s.health()["inflight"] == 5 and s.calls(set(range(5))),
                       "all five taken, the model stage holding them")
            s.proc.send_signal(signal.SIGTERM)
            # Stopping, for as long as requests are in flight: still listening, saying so,
            # and refusing what comes in now. (A refused connection would fail the test.)
            eventually(lambda: httpx.get(f"{s.url}/health", timeout=30).status_code == 503,
                       "/health says the server is stopping")
            health = s.health()
            assert (health["status"], health["inflight"]) == ("stopping", 5)
            late = post(s, "/run", {"text": "too late", "id": 99})
            assert late.status_code == 503
            assert late.json() == {"error": "the service is shutting down"}
            assert late.headers["Retry-After"] == "5"
            assert not [c for c in calls if c.done()]  # still held
            s.release("stop")
            responses = [c.result() for c in calls]
        workers = psutil.Process(s.proc.pid).children(recursive=True)  # each stage's, by now
        assert workers
        assert [r.status_code for r in responses] == [200] * 5
        assert [only_output(r)["value"]["id"] for r in responses] == list(range(5))
        assert not s.calls({99})  # the refused request never reached a stage
        code, out = s.terminate()
        # uvicorn shuts down cleanly, then re-raises the signal it caught, as it should
        assert code == -signal.SIGTERM, out
        assert "Application shutdown complete" in out and "Finished server process" in out
        gone, alive = psutil.wait_procs(workers, timeout=60)
        assert alive == []
    finally:
        s.release("stop")  # where the test failed with them held
        s.terminate()


def test_a_pipeline_with_a_reduce_is_refused(tmp_path):
    module = tmp_path / "reducing.py"
    module.write_text("from conveyor import Pipeline\np = Pipeline('r')\n"
                      "@p.stage()\ndef a(x): return x\n"
                      "@p.reduce(after=a)\ndef total(xs): return sum(xs)\n")
    done = subprocess.run([sys.executable, "-m", "conveyor", "serve", f"{module}:p"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 2
    assert "stage 'total' is a reduce" in done.stderr
