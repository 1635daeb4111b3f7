"""frontend: serves the single-page shop and tells it where the service APIs are.

The page talks to each service's own API from the browser (users, inventory, orders,
payments allow cross-origin calls), so this service holds no state, needs no bus and
never calls another service.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

from ..common.service import configure_logging, serve
from ..common.settings import Settings
from ..common.web import build_api

__all__ = ["build", "main"]

STATIC = Path(__file__).resolve().parent / "static"
SVG = "image/svg+xml"


def build(settings: Settings) -> FastAPI:
    """The frontend's API: the page and its configuration."""
    api = build_api("frontend")
    page = (STATIC / "index.html").read_text()

    @api.get("/", response_class=HTMLResponse, tags=["frontend"])
    async def index() -> str:
        """The shop."""
        return page

    icon = (STATIC / "favicon.svg").read_bytes()

    @api.get("/favicon.svg", response_class=Response, tags=["frontend"])
    @api.get("/favicon.ico", response_class=Response, tags=["frontend"],
             include_in_schema=False)
    async def favicon() -> Response:
        """The shop's icon (browsers ask for /favicon.ico whatever the page says)."""
        return Response(icon, media_type=SVG,
                         headers={"cache-control": "public, max-age=86400"})

    @api.get("/config.json", tags=["frontend"])
    async def config() -> dict[str, str]:
        """Where the page finds each service's API."""
        return {name: settings.url(name) for name in ("users", "orders", "inventory",
                                                      "payments", "console")}

    return api


def main() -> None:
    """Serve the frontend until SIGTERM/SIGINT."""
    configure_logging()
    settings = Settings.from_env()
    serve("frontend", build(settings), settings)
