"""The console's HTTP side: the JSON API, the page, and a stream of server-sent events.

Every error is a JSON body ``{"error": "..."}`` with a status (404 for what is not
there, 403 for a refused action, 400 for a bad request), never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from .._errors import TidingsError, UnknownTopicError
from ._view import ActionRefused, BusView

__all__ = ["ACTION_HEADER", "create_app"]

#: The header every action (POST) carries: a cross-origin page cannot send it.
ACTION_HEADER = "X-Tidings-Console"

log = logging.getLogger("tidings.console")

#: How often the event stream sends a fresh snapshot (seconds).
TICK = 1.0


def create_app(view: BusView, *, documents: Callable[[], Awaitable[dict[str, Any]]],
               tick: float = TICK, cors_origins: Sequence[str] = ()) -> FastAPI:
    """The console's ASGI app over ``view``; ``documents()`` gives ``/api/asyncapi``.

    Pages served from ``cors_origins`` may read the API (GET only, as the shop's page
    does). An action (POST) must carry the :data:`ACTION_HEADER` header, which a page
    of another origin cannot send without the console's consent: no site a user visits
    can re-drive or purge through a console on their machine."""
    app = FastAPI(title="tidings console", docs_url=None, redoc_url=None, openapi_url=None)
    page = resources.files(__package__).joinpath("console.html").read_text("utf-8")
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins),
                           allow_methods=["GET"])

    @app.exception_handler(TidingsError)
    @app.exception_handler(LookupError)
    @app.exception_handler(ValueError)
    async def refused(request: Request, exc: Exception) -> JSONResponse:
        return _error(exc)

    @app.middleware("http")
    async def unexpected(request: Request, call_next: Any) -> Any:
        if request.method == "POST" and request.headers.get(ACTION_HEADER) != "1":
            return JSONResponse({"error": f"an action needs the header {ACTION_HEADER}: 1"},
                                status_code=403)
        try:
            return await call_next(request)
        except Exception as exc:  # one log line and a JSON 500, never a traceback
            log.error("%s %s failed: %s: %s", request.method, request.url.path,
                      type(exc).__name__, exc)
            return _error(exc)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> Any:
        return {"ready": True, "pid": os.getpid()}

    @app.get("/api/topics")
    async def topics() -> Any:
        return await view.topics()

    @app.get("/api/groups")
    async def groups() -> Any:
        return await view.groups()

    @app.get("/api/dead-letters/{topic}")
    async def dead_letters(topic: str) -> Any:
        return await view.dead_letters(topic)

    @app.get("/api/parked")
    async def parked() -> Any:
        return await view.parked()

    @app.get("/api/conversations/{wanted}")
    async def conversation(wanted: str) -> Any:
        return await view.conversation(wanted)

    @app.get("/api/sagas")
    async def sagas() -> Any:
        return await view.sagas()

    @app.get("/api/asyncapi")
    async def asyncapi() -> Any:
        return await documents()

    @app.get("/api/settings")
    async def settings() -> Any:
        return {"allow_actions": view.allow_actions, "sagas": list(view.stores)}

    @app.post("/api/dead-letters/{topic}/redrive")
    async def redrive(topic: str, position: str | None = None) -> Any:
        return {"redriven": await view.redrive(topic, _position(position))}

    @app.post("/api/dead-letters/{topic}/purge")
    async def purge(topic: str, position: str | None = None) -> Any:
        return {"purged": await view.purge(topic, _position(position))}

    @app.post("/api/sagas/{db}/{saga_id}/retry")
    async def retry(db: str, saga_id: str) -> Any:
        return await view.retry_saga(db, saga_id)

    @app.get("/api/events")
    async def events(request: Request) -> StreamingResponse:
        return StreamingResponse(_snapshots(view, request, tick),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    return app


async def _snapshots(view: BusView, request: Request, tick: float) -> AsyncIterator[str]:
    """A ``snapshot`` event (topics and groups) every ``tick`` seconds while connected."""
    while not await request.is_disconnected():
        try:
            data: dict[str, Any] = {"topics": await view.topics(),
                                    "groups": await view.groups()}
        except TidingsError as exc:
            data = {"error": str(exc)}
        yield f"event: snapshot\ndata: {json.dumps(data)}\n\n"
        await asyncio.sleep(tick)


def _position(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    partition, sep, offset = text.partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise ValueError(f"expected a position PARTITION:OFFSET, got {text!r}")
    return int(partition), int(offset)


def _error(exc: Exception) -> JSONResponse:
    if isinstance(exc, ActionRefused):
        status = 403
    elif isinstance(exc, (UnknownTopicError, LookupError)):
        status = 404
    elif isinstance(exc, (ValueError, TidingsError)):
        status = 400
    else:
        status, exc = 500, RuntimeError(f"unexpected {type(exc).__name__}")
    message = exc.args[0] if isinstance(exc, LookupError) and exc.args else str(exc)
    return JSONResponse({"error": message}, status_code=status)
