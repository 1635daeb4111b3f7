"""One service process: its database, its bus connection with the outbox relay, its API.

The HTTP server (uvicorn) owns the process; FastAPI's lifespan opens the database, starts
the tidings app (its subscribers) and the outbox relay before the first request, and
stops them, gracefully, after the last.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from sqlalchemy import MetaData

from tidings import App, Middleware, RetryPolicy
from tidings.otel import TracingMiddleware, configure_tracing
from tidings.prometheus import CONTENT_TYPE, PrometheusMetrics

from .auth import Auth
from .db import Database
from .messaging import UnitOfWork
from .settings import Settings
from .web import build_api

__all__ = ["HANDLER_RETRY", "SUPERVISOR_PID", "OneLineFormatter", "Service",
           "configure_logging", "die_with_supervisor", "run", "serve"]

#: The supervisor's process id, in its children's environment.
SUPERVISOR_PID = "REFERENCE_SUPERVISOR_PID"
PR_SET_PDEATHSIG = 1

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
        self.api: FastAPI = build_api(name, settings, self._lifespan)
        self.auth = Auth(settings)
        self.auth.install(self.api)
        if tracing is not None:
            FastAPIInstrumentor.instrument_app(self.api, tracer_provider=tracing)
        self._ops_routes()
        self._startup: list[Callable[[], Awaitable[None]]] = []

        @self.bus.cron(settings.inbox_prune_cron, name="prune-inboxes")
        async def prune_inboxes() -> None:
            """Forget the inbox rows older than the retention: the inbox only has to
            outlive the redeliveries of a message, not the service."""
            pruned = await self.uow.prune_inboxes(settings.inbox_retention)
            if pruned:
                logging.getLogger("reference").info("pruned %d inbox rows", pruned)

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


class OneLineFormatter(logging.Formatter):
    """One record, one line: control characters in the message (a newline in a user
    name, say) are escaped, so no input can forge a line of another service. A
    traceback, appended after the message, keeps its lines."""

    _ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7f)} | {
        ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The message with its control characters escaped."""
        return super().formatMessage(record).translate(self._ESCAPES)


def configure_logging() -> None:
    """Plain lines on stdout (the supervisor prefixes them with the service name)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(OneLineFormatter("%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
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
        settings.broker_url, settings.mode.value,
    )
    uvicorn.Server(config).run()


def die_with_supervisor() -> None:
    """Have the kernel send this process SIGTERM when the supervisor that started it
    dies, however it dies (SIGKILL included), so no service outlives it on its port.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere, and when no supervisor started
    the process, nothing. The supervisor may have died before the call: then the parent
    is no longer the one named in the environment, and the process stops at once.
    """
    supervisor = os.environ.get(SUPERVISOR_PID)
    if supervisor is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != int(supervisor):
        sys.exit("the supervisor that started this service is gone")


def run(build: Callable[[Settings], Service]) -> None:
    """Build the service from the environment's settings and serve it."""
    die_with_supervisor()
    configure_logging()
    if not os.environ.get("SHOP_SECRET"):
        logging.getLogger("reference").warning(
            "SHOP_SECRET is not set: the tokens this service signs are good here only "
            "(the supervisor gives every service the same secret; by hand, set it)")
    service = build(Settings.from_env())
    serve(service.name, service.api, service.settings)
