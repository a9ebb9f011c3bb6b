"""Serving a pipeline over HTTP: the service front end, the app, its metrics.

::

    HTTP ──▶ app (FastAPI: /run, /run/batch, /stages/NAME, /health, /metrics)
               │ submit ▲ Future[Response]
               ▼        │
             service.Service ── uses ──▶ engine.loop.Engine (a thread turns it)
               │ on_response / on_call
               ▼
             metrics (Prometheus)

:mod:`.service` is the second front end of the engine (the batch run is the
first): it feeds requests in as inputs of an in-memory ledger and answers
each once its rows are final. It may import the engine, executors, ledger and
the top-level modules; nothing imports it but :mod:`conveyor.cli`.
"""

from .service import Closed, Overloaded, Response, Service

__all__ = ["Closed", "Overloaded", "Response", "Service", "create_app", "run"]


def __getattr__(name: str) -> object:
    # The HTTP app needs the serve extra (FastAPI); a Service alone does not.
    if name in ("create_app", "run"):
        from . import app  # the serve extra: imported on first use

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
