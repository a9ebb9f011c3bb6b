"""Prometheus metrics of a served pipeline, in a registry of the app's own.

Counted where they happen: HTTP requests and their latency by an ASGI
middleware; each stage call (its duration and batch size) and each answered
request's per-stage time and cost by the service's hooks, in the service
thread; workers, queue depths and requests in flight read from the service's
snapshot when scraped.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .service import Response, Service

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
ENDPOINTS = ("/run", "/run/batch", "/health", "/metrics", "/docs", "/openapi.json")

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]


class Metrics:
    """The app's metrics; hooks itself into ``service``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, service: Service) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("conveyor_http_requests", "HTTP requests answered, by status",
                                ["endpoint", "code"], registry=registry)
        self.latency = Histogram("conveyor_http_request_seconds", "HTTP request latency",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry)
        self.stage_seconds = Histogram(
            "conveyor_stage_request_seconds", "Seconds a stage spent on one request",
            ["stage"], buckets=LATENCY_BUCKETS, registry=registry)
        self.calls = Histogram(
            "conveyor_stage_call_seconds", "Duration of one stage call (a whole batch)",
            ["stage"], buckets=LATENCY_BUCKETS, registry=registry)
        self.batches = Histogram("conveyor_stage_batch_size", "Items per stage call",
                                 ["stage"], buckets=BATCH_BUCKETS, registry=registry)
        self.cost = Counter("conveyor_stage_cost_dollars",
                            "What stage time spent on requests cost, at the service's prices",
                            ["stage"], registry=registry)
        self.stages = list(service.pipeline.stages)
        registry.register(_Live(service))
        service.on_call = self._call
        service.on_response = self._response

    def _call(self, stage: str, seconds: float, items: int) -> None:
        self.calls.labels(stage).observe(seconds)
        self.batches.labels(stage).observe(items)

    def _response(self, response: Response) -> None:
        for stage, seconds in response.timings.items():
            self.stage_seconds.labels(stage).observe(seconds)
        for stage, dollars in response.cost.items():
            self.cost.labels(stage).inc(dollars)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """An ASGI middleware counting every HTTP request (validation errors included)."""
        known = {*ENDPOINTS, *(f"/stages/{name}" for name in self.stages)}

        async def counted(scope: Scope, receive: Callable[[], Awaitable[Any]],
                          send: Callable[[Any], Awaitable[None]]) -> None:
            if scope["type"] != "http":
                return await app(scope, receive, send)
            endpoint = scope["path"] if scope["path"] in known else "other"
            started = time.perf_counter()
            code = 500  # unless a response starts

            async def sending(message: Any) -> None:
                nonlocal code
                if message["type"] == "http.response.start":
                    code = message["status"]
                await send(message)

            try:
                await app(scope, receive, sending)
            finally:
                self.latency.labels(endpoint).observe(time.perf_counter() - started)
                self.requests.labels(endpoint, str(code)).inc()

        return counted


class _Live(Collector):
    """Gauges read at scrape time from the service's last snapshot."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        workers = GaugeMetricFamily("conveyor_workers", "Live workers per stage",
                                    labels=["stage"])
        for stage, n in self.service.workers().items():
            workers.add_metric([stage], n)
        queued = GaugeMetricFamily("conveyor_queue_depth", "Items waiting per stage",
                                   labels=["stage"])
        for stage, n in self.service.queued().items():
            queued.add_metric([stage], n)
        inflight = GaugeMetricFamily("conveyor_requests_in_flight",
                                     "Requests taken and not answered yet")
        inflight.add_metric([], self.service.inflight)
        yield from (workers, queued, inflight)
