"""examples/textclass.py served for real: a MiniLM model stage behind HTTP, checked by
hand and by schemathesis, which generates requests from the app's OpenAPI and
finds no server error."""

from __future__ import annotations

from typing import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from test_serve import ROOT, Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def textclass() -> Iterator[Server]:
    s = Server(str(ROOT / "examples" / "textclass.py") + ":pipe", "--cpus", "2")
    try:
        s.wait_ready()
        yield s
    finally:
        s.terminate()


@pytest.mark.parametrize("text, topic", [
    ("The striker scored twice in the second half and the team won the cup.", "sport"),
    ("Heavy rain and strong winds are forecast for the weekend.", "weather"),
    ("Shares fell after the company reported lower quarterly profits.", "business"),
    ("Researchers measured the reaction in a laboratory experiment.", "science"),
])
def test_the_model_names_the_topic(textclass, text, topic):
    response = httpx.post(f"{textclass.url}/run", json={"text": text, "id": topic}, timeout=60)
    assert response.status_code == 200, response.text
    [out] = response.json()["outputs"]
    assert out["value"]["topic"] == topic and out["value"]["id"] == topic
    assert out["value"]["decided_by"] == "model"
    assert "Classify" in response.json()["timings"]


def test_a_text_too_short_for_the_model_never_reaches_it(textclass):
    response = httpx.post(f"{textclass.url}/run", json={"text": "  ok  "}, timeout=60)
    [out] = response.json()["outputs"]
    assert out["value"] == {"id": None, "topic": "unknown", "score": 0.0, "decided_by": "rule"}
    assert set(response.json()["timings"]) == {"preprocess", "trivial", "postprocess"}


def test_the_model_workers_stay_warm(textclass):
    health = httpx.get(f"{textclass.url}/health").json()
    assert health["warm"] and health["workers"]["Classify"] == 1


def test_generated_requests_find_no_server_error(textclass):
    schema = schemathesis.openapi.from_url(f"{textclass.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 8  # /run, /run/batch, 4 stages, /health, /metrics

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def check(case: schemathesis.Case) -> None:
            # A deadline the client sets shorter than the work is a 504 by design
            # (test_serve tests it); generated ones would only find that again.
            if case.query:
                case.query.pop("timeout", None)
            case.call_and_validate(checks=[not_a_server_error], timeout=60)

        check()
