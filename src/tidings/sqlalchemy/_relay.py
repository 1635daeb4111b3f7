"""The outbox relay: publishes recorded events to the bus, in order per key, at least once.

It reads the oldest rows of ``tidings_outbox``, publishes them (rows of one key one
after the other, different keys concurrently), then deletes the published rows. A
crash after publishing and before deleting publishes those rows again, with the same
message ids, so an inbox on the consuming side drops the repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .._errors import ConfigurationError
from ._lease import Lease
from ._schema import outbox_table

if TYPE_CHECKING:
    from .._app import App
    from ._outbox import Outbox

__all__ = ["OutboxRelay"]

log = logging.getLogger("tidings.outbox")

LEASE_NAME = "tidings-outbox-relay"


class OutboxRelay:
    """Moves an outbox's events to the bus while its app runs (see :meth:`Outbox.relay`)."""

    def __init__(self, outbox: Outbox, app: App, *, interval: float, batch: int,
                 lease: float) -> None:
        if interval <= 0 or batch < 1 or lease <= 0:
            raise ConfigurationError("an outbox relay needs interval > 0, batch >= 1, lease > 0")
        self._outbox = outbox
        self._app = app
        self.interval = interval
        self.batch = batch
        self._lease = Lease(outbox.engine, LEASE_NAME, app.instance_id, lease)
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    async def start(self) -> None:
        """Start relaying (the app's startup hook)."""
        self._outbox._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="tidings-outbox-relay")

    async def stop(self) -> None:
        """Stop relaying and give the lease up (the app's shutdown hook)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        with contextlib.suppress(Exception):
            await self._lease.release()

    async def run_once(self) -> int:
        """Publish one batch of recorded events now; return how many were published."""
        async with self._outbox.engine.connect() as conn:
            rows = (await conn.execute(
                sa.select(outbox_table).order_by(outbox_table.c.seq).limit(self.batch)
            )).all()
        if not rows:
            return 0
        lanes: dict[str | None, list[Any]] = {}
        for row in rows:
            lanes.setdefault(row.key, []).append(row)
        results = await asyncio.gather(*(self._publish_lane(lane) for lane in lanes.values()),
                                       return_exceptions=True)
        done = [seq for result in results if isinstance(result, list) for seq in result]
        if done:
            async with self._outbox.engine.begin() as conn:
                await conn.execute(sa.delete(outbox_table).where(outbox_table.c.seq.in_(done)))
            self.published += len(done)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise failures[0]
        return len(done)

    async def _publish_lane(self, rows: Sequence[Any]) -> list[int]:
        """Publish rows of one key in order; stop at the first failure (order per key)."""
        done: list[int] = []
        try:
            for row in rows:
                await self._app.publish(row.topic, row.value, key=row.key,
                                        headers=json.loads(row.headers),
                                        delay=_delay(row.deliver_at))
                done.append(row.seq)
        except Exception as exc:
            if not done:
                raise
            log.warning("outbox relay: publishing to %s failed: %r", rows[0].topic, exc)
        return done

    async def _loop(self) -> None:
        wake = self._outbox._wake
        assert wake is not None
        while self._task is not None:  # cleared by stop(), even if a cancel is lost
            count, pause = 0, self.interval
            try:
                if await self._lease.acquire():
                    count = await self.run_once()
                else:
                    pause = max(self.interval, self._lease.duration / 3)
            except Exception as exc:
                log.warning("outbox relay failed, retrying in 1 s: %r", exc)
                pause = 1.0
            if count >= self.batch:
                continue
            wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await wake.wait()


def _delay(deliver_at: float | None) -> datetime | None:
    if deliver_at is None or deliver_at <= time.time():
        return None
    return datetime.fromtimestamp(deliver_at, UTC)
