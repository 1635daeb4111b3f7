"""What every service's HTTP API shares: /health, a body-size limit, JSON errors, CORS
for the shop's page only, trusted Host headers only, and security headers."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .settings import Settings

__all__ = ["MAX_BODY", "ApiError", "Health", "SecurityHeaders", "build_api", "error_responses",
           "page_origins"]

MAX_BODY = 1024 * 1024
log = logging.getLogger("reference.web")


class Health(BaseModel):
    """``GET /health``."""

    service: str
    pid: int
    status: str


class ErrorBody(BaseModel):
    """Every 4xx: a JSON reason."""

    detail: Any


class ApiError(Exception):
    """A request the service refuses: becomes ``status`` with ``{"detail": reason}``."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None
                 ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries documenting JSON errors."""
    return {code: {"model": ErrorBody} for code in codes}


class BodyLimit:
    """Refuse a body over ``limit`` bytes with 413 and a JSON reason: at once when its
    Content-Length says so, else (chunked) once that much has arrived."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.limit:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        buffered, size = [], 0
        while True:  # no length given: read it all (at most the limit), then replay it
            message = await receive()
            buffered.append(message)
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        replay = iter(buffered)

        async def replayed() -> Message:
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"detail": f"request body over {self.limit} bytes"}, 413)
        await response(scope, receive, send)


class SecurityHeaders:
    """Add ``headers`` to every HTTP response (those already set stay)."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


#: On every answer: no MIME sniffing, no framing, no referrer to other sites.
BASE_HEADERS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY",
                "referrer-policy": "same-origin"}


def page_origins(settings: Settings) -> list[str]:
    """The origins the shop's page is served from (the only ones allowed cross-origin)."""
    port = settings.port("frontend")
    hosts = dict.fromkeys([settings.host, "127.0.0.1", "localhost", *settings.allowed_hosts])
    return [f"http://{host}:{port}" for host in hosts]


def _handlers(api: FastAPI) -> None:
    @api.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.reason}, exc.status, headers=exc.headers)

    @api.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")}
                  for e in exc.errors()]
        return JSONResponse({"detail": errors}, 422)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, exc.status_code)


def build_api(
    name: str,
    settings: Settings,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
    headers: dict[str, str] | None = None,
) -> FastAPI:
    """A FastAPI app with the shared pieces; the service adds its routes. Only the
    shop's page may call it cross-origin, and only under a trusted host name (a DNS
    rebinding page cannot reach it); ``headers`` go on every answer besides the base
    security headers."""
    api = FastAPI(title=f"tidings reference: {name}", version="1.0", lifespan=lifespan)
    api.add_middleware(CORSMiddleware, allow_origins=page_origins(settings),
                       allow_methods=["GET", "POST", "PUT"],
                       allow_headers=["authorization", "content-type"],
                       expose_headers=["x-next-cursor"])
    api.add_middleware(BodyLimit)
    api.add_middleware(SecurityHeaders, headers={**BASE_HEADERS, **(headers or {})})
    hosts = dict.fromkeys(["127.0.0.1", "localhost", settings.host, *settings.allowed_hosts])
    api.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))
    _handlers(api)

    @api.get("/health", response_model=Health, tags=["ops"])
    async def health() -> Health:
        """Liveness: the service's name and process id."""
        return Health(service=name, pid=os.getpid(), status="ok")

    return api

