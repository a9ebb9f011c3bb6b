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
from pathlib import Path
from typing import Iterator

import httpx
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVED = ROOT / "tests" / "pipelines" / "served.py"

pytestmark = pytest.mark.slow


class Server:
    """``conveyor serve`` in a process of its own, stopped with SIGTERM."""

    def __init__(self, spec: str, *options: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "serve", spec, "--port", str(self.port), *options],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

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


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server(f"{SERVED}:pipe", "--cpus", "2", "--gpus", "1", "--timeout", "10",
               "--max-queue", "24")
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


def test_a_failing_stage_is_a_500_with_its_name_and_message_and_no_traceback(server):
    response = post(server, "/run", {"text": "bad input", "fail": True})
    assert response.status_code == 500
    body = response.json()
    assert body["stage"] == "model"
    assert body["error"] == "RuntimeError: model cannot read 'bad input'"
    assert "traceback" not in body and "Traceback" not in response.text


def test_a_request_past_its_timeout_is_a_504_and_the_server_goes_on(server):
    started = time.monotonic()
    response = post(server, "/run", {"text": "slow one", "sleep": 2}, timeout=0.5)
    assert response.status_code == 504
    assert response.json() == {"error": "timed out after 0.5 s"}
    assert time.monotonic() - started < 2
    assert post(server, "/run", {"text": "after that"}).status_code == 200


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
    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(*(
                client.post("/run", json={"text": f"flood {i}", "sleep": 0.5}) for i in range(40)))

    responses = asyncio.run(flood())
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 24 and 503 in codes, codes
    refused = next(r for r in responses if r.status_code == 503)
    assert int(refused.headers["Retry-After"]) >= 1
    assert "overloaded" in refused.json()["error"]


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


def test_sigterm_answers_requests_in_flight_then_stops_every_worker():
    s = Server(f"{SERVED}:pipe", "--cpus", "2", "--gpus", "1", "--grace", "20")
    try:
        s.wait_ready()
        workers = psutil.Process(s.proc.pid).children(recursive=True)
        assert workers

        async def in_flight() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
                calls = [asyncio.ensure_future(client.post(
                    "/run", json={"text": f"late {i}", "id": i, "sleep": 1.0})) for i in range(5)]
                await asyncio.sleep(0.4)  # they are in the model stage now
                s.proc.send_signal(signal.SIGTERM)
                return await asyncio.gather(*calls)

        responses = asyncio.run(in_flight())
        assert [r.status_code for r in responses] == [200] * 5
        assert [only_output(r)["value"]["id"] for r in responses] == list(range(5))
        code, out = s.terminate()
        # uvicorn shuts down cleanly, then re-raises the signal it caught, as it should
        assert code == -signal.SIGTERM, out
        assert "Application shutdown complete" in out and "Finished server process" in out
        time.sleep(0.5)
        assert not [w for w in workers if w.is_running() and w.status() != "zombie"]
    finally:
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
