"""One service process: its database, its bus connection with the outbox relay, its API.

The HTTP server (uvicorn) owns the process; FastAPI's lifespan opens the database, starts
the tidings app (its subscribers) and the outbox relay before the first request, and
stops them, gracefully, after the last.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from sqlalchemy import MetaData

from tidings import App, Middleware, RetryPolicy, redact_url
from tidings.otel import TracingMiddleware, configure_tracing
from tidings.prometheus import CONTENT_TYPE, PrometheusMetrics

from .db import Database
from .messaging import UnitOfWork
from .settings import Settings
from .web import build_api

__all__ = ["HANDLER_RETRY", "Service", "configure_logging", "run", "serve"]

#: Handlers retry transient failures (a locked database, a message that arrived before
#: the one it depends on) for about a minute before dead-lettering.
HANDLER_RETRY = RetryPolicy(max_attempts=30, backoff=0.05, multiplier=1.5, max_backoff=3.0)


class Service:
    """A service's parts; its module adds routes to ``api`` and handlers to ``bus``."""

    def __init__(self, name: str, settings: Settings, metadata: MetaData) -> None:
        self.name = name
        self.settings = settings
        self.db = Database(settings.database(name), metadata)
        # Traces are exported when OTEL_EXPORTER_OTLP_ENDPOINT is set (the supervisor
        # passes its environment on); metrics are always served on /metrics.
        tracing = configure_tracing(name)
        self.metrics = PrometheusMetrics()
        middleware: list[Middleware] = [self.metrics]
        if tracing is not None:
            middleware.insert(0, TracingMiddleware(tracing))
        self.bus = App(name, broker=settings.broker_url, retry=HANDLER_RETRY,
                       shutdown_timeout=10, middleware=middleware)
        self.uow = UnitOfWork(self.db, self.bus)
        self.metrics.watch(self.bus)
        self.metrics.watch_outbox(self.uow.outbox)
        self.api: FastAPI = build_api(name, self._lifespan)
        if tracing is not None:
            FastAPIInstrumentor.instrument_app(self.api, tracer_provider=tracing)
        self._ops_routes()
        self._startup: list[Callable[[], Awaitable[None]]] = []

    def _ops_routes(self) -> None:
        api, bus, metrics = self.api, self.bus, self.metrics

        @api.get("/ready", tags=["ops"], responses={503: {"description": "not ready"}})
        async def ready() -> JSONResponse:
            """Readiness: the bus answers and every subscriber runs (503 with the
            reasons when not)."""
            health = await bus.health(timeout=2.0)
            return JSONResponse(health.as_dict(), 200 if health.ready else 503)

        @api.get("/metrics", tags=["ops"], response_class=Response)
        async def scrape() -> Response:
            """Metrics in the Prometheus text format."""
            return Response(await metrics.render(), media_type=CONTENT_TYPE)

    def on_startup(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` once the database is ready, before the bus and the API start."""
        self._startup.append(hook)

    @asynccontextmanager
    async def _lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        await self.db.create()
        for hook in self._startup:
            await hook()
        async with self.bus:  # starts the subscribers and the outbox relay
            yield
        await self.db.close()


def configure_logging() -> None:
    """Plain lines on stdout (the supervisor prefixes them with the service name)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s",
                        force=True)
    logging.getLogger("tidings").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)


def serve(name: str, api: FastAPI, settings: Settings) -> None:
    """Serve ``api`` on ``name``'s port until SIGTERM/SIGINT."""
    config = uvicorn.Config(
        api, host=settings.host, port=settings.port(name), access_log=False,
        log_config=None, lifespan="on", timeout_graceful_shutdown=5,
    )
    logging.getLogger("reference").info(
        "%s listening on %s (bus %s, mode %s)", name, settings.url(name),
        redact_url(settings.broker_url), settings.mode.value,
    )
    uvicorn.Server(config).run()


def run(build: Callable[[Settings], Service]) -> None:
    """Build the service from the environment's settings and serve it."""
    configure_logging()
    service = build(Settings.from_env())
    serve(service.name, service.api, service.settings)
