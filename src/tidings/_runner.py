"""Running an App as a process: until SIGTERM/SIGINT, then a graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING

from ._redact import redact_url

if TYPE_CHECKING:
    from ._app import App

__all__ = ["run_app", "serve"]


async def serve(app: App, stop: asyncio.Event | None = None) -> None:
    """Run ``app`` until ``stop`` is set or the process gets SIGTERM or SIGINT."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with app:
            logging.getLogger("tidings").info("%s running on %s", app.instance_id,
                                              redact_url(app.broker))
            await stop.wait()
            logging.getLogger("tidings").info("%s shutting down", app.instance_id)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run_app(app: App) -> None:
    """Block running ``app``; configure plain logging if the program did not."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    asyncio.run(serve(app))
