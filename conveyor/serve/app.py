"""HTTP serving of a pipeline (FastAPI): the engine's warm workers behind typed endpoints.

::

    clients ──HTTP──▶ uvicorn event loop (FastAPI handlers)
                        │ body validated against the stage's input type → 422
                        │ Service.submit_many() → 503 + Retry-After when full
                        ▼
                      Service thread: Engine.turn() over warm workers, batches
                        │ Future[Response] per request
                        ▼
                      handler awaits it (504 after the timeout) → JSON with
                      per-stage timings and cost, Server-Timing + X-Conveyor-Cost

Endpoints (see ``/docs`` for the schemas, built from the stages' annotations):

``POST /run``
    the whole pipeline for one input (the first stage's input type); routing
    by ``when`` applies, so an input no GPU branch accepts never reaches the GPU.
``POST /run/batch``
    a list of inputs; all are queued or none (503).
``POST /stages/{name}``
    one stage alone, for each stage.
``GET /health``, ``GET /metrics`` (Prometheus text)

A response lists the outputs that went no further (the pipeline's results for
that input) and, per stage, the seconds spent and what they cost at the
service's prices: in the body (``timings``, ``cost``, ``cost_total``) and in
the headers (``Server-Timing`` in milliseconds, ``X-Conveyor-Cost`` in dollars).
A stage that fails answers 500 with the stage and its error (the traceback
only with ``debug``). A request that outlives its timeout answers 504; the work
already queued for it still runs (its workers are not interrupted) and is
dropped when done.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import sys
import time
from contextlib import asynccontextmanager
from typing import Annotated, Any, AsyncIterator

from fastapi import Body, FastAPI, Query
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, TypeAdapter, create_model

from ..errors import InputError
from ..pipeline import Pipeline
from ..resources import Budget
from ..stage import Stage
from ..validation import boundary, value_types
from .metrics import Metrics
from .service import Closed, Overloaded, Response, Service

DEFAULT_TIMEOUT = 60.0  # seconds a request may take, unless the server says otherwise


class StageOutput(BaseModel):
    """One result: a value a stage produced that went no further."""

    stage: str
    key: str
    value: Any


class RunResponse(BaseModel):
    """What became of one input."""

    key: str
    outputs: list[StageOutput]
    timings: dict[str, float]  # seconds per stage
    cost: dict[str, float]  # dollars per stage
    cost_total: float
    seconds: float  # from arrival to answer


class ErrorBody(BaseModel):
    """Why a request got no result."""

    error: str
    stage: str | None = None
    key: str | None = None
    traceback: str | None = None


class BatchEntry(BaseModel):
    """One input of a batch: its status code and its result or error."""

    status: int
    result: RunResponse | None = None
    error: ErrorBody | None = None


class BatchResponse(BaseModel):
    results: list[BatchEntry]


def run(app: FastAPI, *, host: str, port: int, grace: float) -> None:
    """Serve ``app`` (from :func:`create_app`) with uvicorn until SIGTERM or Ctrl-C.

    On the signal the server keeps listening while requests are in flight (up to
    ``grace`` seconds): it answers them, and answers what comes in meanwhile with
    503 (``/health`` too, so a load balancer sends no more); then it stops
    listening, and the app's shutdown stops the service and its workers.
    """
    import uvicorn

    service: Service = app.state.service

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[Any] | None = None) -> None:
            service.close()
            deadline = time.monotonic() + grace
            while (service.inflight and not service.broken and not self.force_exit
                   and time.monotonic() < deadline):
                await asyncio.sleep(0.05)
            await super().shutdown(sockets)

    server = Server(uvicorn.Config(app, host=host, port=port, log_level="info",
                                   timeout_graceful_shutdown=int(grace) + 1))
    server.run()
    if not server.started:
        sys.exit(3)  # as uvicorn.run: the app did not start


def create_app(pipeline: Pipeline, *, executor: str = "local", budget: Budget | None = None,
               timeout: float = DEFAULT_TIMEOUT, max_queue: int = 1000, debug: bool = False,
               prices: dict[str, float] | None = None, grace: float = 30.0,
               warmup: float = 300.0) -> FastAPI:
    """A FastAPI app serving ``pipeline``; its service starts and stops with the app.

    Args:
        timeout: the most seconds a request may take (``?timeout=`` may ask for less).
        max_queue: requests held at once; more are refused with 503 and ``Retry-After``.
        debug: include tracebacks in 500 answers.
        prices: $ per CPU-hour, GB-hour, GPU-hour for the cost of each request.
        grace: seconds in-flight requests get to finish when the server stops.
        warmup: seconds startup waits for stages' ``min_workers`` to be set up.
    """
    service = Service(pipeline, executor=executor, budget=budget, max_queue=max_queue,
                      prices=prices)
    metrics = Metrics(service)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        # Ready means warm: workers with min_workers are set up before the first request.
        await asyncio.to_thread(service.wait_warm, warmup)
        try:
            yield
        finally:
            await asyncio.to_thread(service.stop, grace)

    app = FastAPI(title=f"conveyor: {pipeline.name}", lifespan=lifespan,
                  description=_describe(pipeline))
    app.state.service = service
    app.add_middleware(metrics.middleware)
    root = pipeline.root()
    app.add_api_route("/run", _endpoint(service, root, None, timeout, debug), methods=["POST"],
                      response_model=RunResponse, responses=_ERRORS,
                      summary=f"Run the pipeline on one input (of stage {root.name!r})")
    app.add_api_route("/run/batch", _batch_endpoint(service, root, timeout, debug),
                      methods=["POST"], response_model=BatchResponse, responses=_ERRORS,
                      summary="Run the pipeline on a list of inputs")
    for stage in pipeline.stages.values():
        app.add_api_route(f"/stages/{stage.name}",
                          _endpoint(service, stage, stage.name, timeout, debug),
                          methods=["POST"], response_model=_typed_response(stage),
                          responses=_ERRORS, summary=f"Run stage {stage.name!r} alone")

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 while the service takes requests, 503 when it is stopping or broken."""
        body = {"status": "ok", "warm": service.warm, "inflight": service.inflight,
                "workers": service.workers(), "queued": service.queued()}
        if service.broken or service.closing:
            body["status"] = service.broken or "stopping"
            return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        """Prometheus text: requests, latencies, per-stage time, batches, workers, queue, cost."""
        return PlainTextResponse(metrics.render(), media_type=metrics.content_type)

    return app


_ERRORS: dict[int | str, dict[str, Any]] = {
    500: {"model": ErrorBody, "description": "a stage failed (its name and error)"},
    503: {"model": ErrorBody, "description": "overloaded or stopping; see Retry-After"},
    504: {"model": ErrorBody, "description": "the request outlived its timeout"},
}


def _input_type(stage: Stage) -> Any:
    """What one value into ``stage`` must be: its annotation where pydantic checks it."""
    takes = value_types(stage)[0]
    return takes if boundary(stage).takes is not None else Any


def _typed_response(stage: Stage) -> type[BaseModel]:
    """The response model of a one-stage call: its outputs typed by the stage's return."""
    returns = value_types(stage)[1]
    if boundary(stage).returns is None:
        return RunResponse
    name = _model_name(stage.name)
    output = create_model(f"{name}Output", __base__=StageOutput, value=(returns, ...))
    return create_model(f"{name}Response", __base__=RunResponse, outputs=(list[output], ...))


def _model_name(stage: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", stage))


# Below a millisecond no request can be answered: a 422 says so, where a 504 would blame the work.
MIN_TIMEOUT = 0.001
_TIMEOUT_QUERY = Query(None, ge=MIN_TIMEOUT, description=(
    f"seconds to wait at most, at least {MIN_TIMEOUT:g} (capped by the server)"))


def _endpoint(service: Service, stage: Stage, alone: str | None, limit: float, debug: bool
              ) -> Any:
    """The handler for one input into ``stage`` (the whole pipeline unless ``alone``)."""
    takes = _input_type(stage)
    plain = TypeAdapter(takes)

    async def endpoint(body: Any, timeout: float | None = None) -> JSONResponse:
        answered = await _answers(service, [plain.dump_python(body, mode="json")], alone,
                                  min(timeout or limit, limit))
        if isinstance(answered, JSONResponse):
            return answered
        status, body_out = _outcome(answered[0], debug)
        return JSONResponse(body_out, status_code=status, headers=_headers(answered[0]))

    _sign(endpoint, takes)
    return endpoint


def _batch_endpoint(service: Service, stage: Stage, limit: float, debug: bool) -> Any:
    """The handler for a list of inputs into the whole pipeline."""
    takes = _input_type(stage)
    plain = TypeAdapter(list[takes])  # type: ignore[valid-type]

    async def endpoint(body: Any, timeout: float | None = None) -> JSONResponse:
        answered = await _answers(service, plain.dump_python(body, mode="json"), None,
                                  min(timeout or limit, limit))
        if isinstance(answered, JSONResponse):
            return answered
        entries = []
        for response in answered:
            status, out = _outcome(response, debug)
            entries.append({"status": status, "result" if status == 200 else "error": out})
        return JSONResponse({"results": entries})

    _sign(endpoint, list[takes])  # type: ignore[valid-type]
    return endpoint


async def _answers(service: Service, values: list[Any], alone: str | None, wait: float
                   ) -> list[Response] | JSONResponse:
    """The responses to ``values``, or the error answer: refused (503), not JSON (422),
    past ``wait`` seconds (504), or the service broke meanwhile (500)."""
    try:
        futures = service.submit_many(values, alone)
    except (Overloaded, Closed) as exc:
        return _refused(exc)
    except InputError as exc:
        return _invalid(exc)
    try:
        return list(await asyncio.wait_for(
            asyncio.gather(*(asyncio.wrap_future(f) for f in futures)), wait))
    except asyncio.TimeoutError:
        return _error(504, f"timed out after {wait:g} s")
    except Exception as exc:  # the service broke while these were in it
        return _error(500, f"service broken: {exc}")


def _sign(endpoint: Any, takes: Any) -> None:
    """Give ``endpoint`` the signature FastAPI reads: the body typed as the stage takes it."""
    endpoint.__signature__ = inspect.Signature([
        inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          annotation=Annotated[takes, Body()]),
        inspect.Parameter("timeout", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          default=_TIMEOUT_QUERY, annotation=float | None),
    ])


def _outcome(response: Response, debug: bool) -> tuple[int, dict[str, Any]]:
    """The status and body answering ``response``: its results, or its first failure."""
    if response.failures:
        failure = response.failures[0]
        return 500, ErrorBody(error=failure["error"], stage=failure["stage"], key=failure["key"],
                              traceback=failure["traceback"] if debug else None
                              ).model_dump(exclude_none=True)
    return 200, {"key": response.key, "outputs": response.outputs, "timings": response.timings,
                 "cost": response.cost, "cost_total": response.cost_total,
                 "seconds": response.seconds}


def _headers(response: Response) -> dict[str, str]:
    timing = [f"{_token(stage)};dur={seconds * 1000:.3f}"
              for stage, seconds in response.timings.items()]
    timing.append(f"total;dur={response.seconds * 1000:.3f}")
    return {"Server-Timing": ", ".join(timing),
            "X-Conveyor-Cost": f"{response.cost_total:.10f}"}


def _token(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _refused(exc: Overloaded | Closed) -> JSONResponse:
    retry_after = exc.retry_after if isinstance(exc, Overloaded) else 5
    return _error(503, str(exc), {"Retry-After": str(retry_after)})


def _invalid(exc: InputError) -> JSONResponse:
    """A body pydantic accepted that still cannot travel (a 422 shaped like pydantic's)."""
    return JSONResponse({"detail": [{"loc": ["body"], "msg": str(exc), "type": "value_error"}]},
                        status_code=422)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _describe(pipeline: Pipeline) -> str:
    lines = [f"Serves the conveyor pipeline **{pipeline.name}**. Stages:", ""]
    for stage in pipeline.stages.values():
        res = stage.resources
        after = f" after {', '.join(stage.upstream)}" if stage.upstream else ""
        batch = f", batches of {stage.batch_size}" if stage.batch_size else ""
        lines.append(f"- `{stage.name}`{after}: {res.cpus:g} CPU, {res.gpus:g} GPU{batch}")
    lines += ["", "Each response carries per-stage `timings` (s) and `cost` ($), also as "
              "`Server-Timing` and `X-Conveyor-Cost` headers."]
    return "\n".join(lines)
