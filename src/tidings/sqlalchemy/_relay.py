"""The outbox relay: publishes recorded events to the bus, in order per key, at least once.

It reads the oldest rows of ``tidings_outbox``, appends them to the bus in one batch
(in recorded order, so each key's rows keep theirs), then deletes them. A
crash after publishing and before deleting publishes those rows again, with the same
message ids, so an inbox on the consuming side drops the repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa

from .._errors import ConfigurationError
from .._message import Outgoing
from ._group import GroupCommit
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
            rows = (await conn.execute(_OLDEST, {"limit": self.batch})).all()
        if not rows:
            return 0
        app = self._app
        # One append for the whole batch (one durable write on the bus, not one per
        # row), in recorded order, so each key's events keep theirs. If it fails nothing
        # is deleted and the batch is published again, under the same message ids.
        await app._publish_batch([
            Outgoing(row.topic, row.value, row.key, json.loads(row.headers), _delay(row.deliver_at))
            for row in rows
        ], "relay")
        if len(rows) == rows[-1].seq - rows[0].seq + 1:  # no gaps: a range
            delete, values = _DELETE_RANGE, {"first": rows[0].seq, "last": rows[-1].seq}
        else:
            delete, values = _DELETE_SOME, {"seqs": [row.seq for row in rows]}
        await GroupCommit.of(self._outbox.engine).run(lambda conn: conn.execute(delete, values))
        self.published += len(rows)
        return len(rows)

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


_seq = outbox_table.c.seq
_OLDEST = sa.select(outbox_table).order_by(_seq).limit(sa.bindparam("limit"))
_DELETE_RANGE = sa.delete(outbox_table).where(
    _seq >= sa.bindparam("first"), _seq <= sa.bindparam("last"))
_DELETE_SOME = sa.delete(outbox_table).where(_seq.in_(sa.bindparam("seqs", expanding=True)))


def _delay(deliver_at: float | None) -> datetime | None:
    if deliver_at is None or deliver_at <= time.time():
        return None
    return datetime.fromtimestamp(deliver_at, UTC)
