"""console: the tidings console over the shop's bus and the orders service's sagas.

It starts once the bus exists (the services create it), allows actions (the demo runs
on one machine, for its user), and lets the shop's page read conversations (an order's
timeline) across origins.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from tidings.console import serve

from ..common.service import configure_logging, die_with_supervisor
from ..common.settings import Settings

__all__ = ["main"]

log = logging.getLogger("reference.console")


async def _wait_for(path: Path, timeout: float = 60.0) -> bool:
    for _ in range(int(timeout * 10)):
        if await asyncio.to_thread(path.is_file):
            return True
        await asyncio.sleep(0.1)
    return False


async def _run(settings: Settings) -> None:
    bus = settings.broker_url
    if bus.startswith("sqlite:///"):
        await _wait_for(Path(bus.removeprefix("sqlite:///")))
    orders = settings.database("orders")
    dbs = [f"sqlite+aiosqlite:///{orders}"] if await _wait_for(orders, 30) else []
    log.info("console listening on %s", settings.url("console"))
    await serve(bus, dbs, port=settings.port("console"), host=settings.host,
                allow_actions=True, cors_origins=[settings.url("frontend")])


def main() -> None:
    """Serve the console until SIGTERM/SIGINT."""
    die_with_supervisor()
    configure_logging()
    asyncio.run(_run(Settings.from_env()))
