"""frontend: serves the single-page shop and tells it where the service APIs are.

The page talks to each service's own API from the browser (users, inventory, orders,
payments allow cross-origin calls from this page's origin only), so this service holds
no state, needs no bus and never calls another service. The page runs only its own
script and style (a Content-Security-Policy without inline code) and may connect only
to the services.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

from ..common.service import configure_logging, die_with_supervisor, serve
from ..common.settings import Settings
from ..common.web import build_api

__all__ = ["build", "main"]

STATIC = Path(__file__).resolve().parent / "static"
SVG = "image/svg+xml"
APIS = ("users", "orders", "inventory", "payments", "console")
ASSETS = {"shop.js": "text/javascript", "shop.css": "text/css"}


def content_security_policy(settings: Settings) -> str:
    """The page's CSP: its own script, style and images; connections to the services."""
    services = " ".join(settings.url(name) for name in APIS)
    return (f"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
            f"connect-src 'self' {services}; base-uri 'none'; form-action 'self'; "
            f"frame-ancestors 'none'")


def build(settings: Settings) -> FastAPI:
    """The frontend's API: the page, its script and style, and its configuration."""
    api = build_api("frontend", settings,
                    headers={"content-security-policy": content_security_policy(settings)})
    page = (STATIC / "index.html").read_text()
    assets = {name: (STATIC / name).read_bytes() for name in ASSETS}

    @api.get("/", response_class=HTMLResponse, tags=["frontend"])
    async def index() -> str:
        """The shop."""
        return page

    @api.get("/shop.js", response_class=Response, tags=["frontend"])
    async def script() -> Response:
        """The page's script."""
        return Response(assets["shop.js"], media_type=ASSETS["shop.js"])

    @api.get("/shop.css", response_class=Response, tags=["frontend"])
    async def style() -> Response:
        """The page's style sheet."""
        return Response(assets["shop.css"], media_type=ASSETS["shop.css"])

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
        return {name: settings.url(name) for name in APIS}

    return api


def main() -> None:
    """Serve the frontend until SIGTERM/SIGINT."""
    die_with_supervisor()
    configure_logging()
    settings = Settings.from_env()
    serve("frontend", build(settings), settings)
