"""The outbox relay: publishes recorded events to the bus, in order per key, at least once.

It reads the oldest rows of ``tidings_outbox``, appends them to the bus in one batch
(in recorded order, so each key's rows keep theirs), then deletes them. A
crash after publishing and before deleting publishes those rows again, with the same
message ids, so an inbox on the consuming side drops the repeats. A row the bus refuses
for good (over its size limit) is moved to ``tidings_outbox_dead`` with the later rows
of its topic and key, and the others go on (see ``_outbox_dead``).
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
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from .._errors import ConfigurationError, MessageTooLargeError
from .._message import Outgoing
from .._records import OutRecord, check_record_bytes
from ._group import GroupCommit
from ._lease import Lease
from ._outbox_dead import PERMANENT, Triage, dead_keys, ensure_dead_table, move_dead
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
        await ensure_dead_table(self._outbox.engine)
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
        """Publish one batch of recorded events now; return how many rows it took care
        of (published, or moved to the dead rows)."""
        async with self._outbox.engine.connect() as conn:
            rows = (await conn.execute(_OLDEST, {"limit": self.batch})).all()
            triage = Triage(await dead_keys(conn) if rows else set())
        if not rows:
            return 0
        limit = self._outbox.max_record_bytes or self._app.transport.max_record_bytes
        sendable = self._sendable(rows, triage, limit)
        try:
            # One append for the whole batch (one durable write on the bus, not one per
            # row), in recorded order, so each key's events keep theirs. If it fails
            # nothing is deleted and the batch is published again, under the same ids.
            await self._publish(sendable)
        except PERMANENT:
            await self._one_by_one(sendable, triage)  # find the rows the bus refuses
        await GroupCommit.of(self._outbox.engine).run(lambda conn: self._settle(conn, rows, triage))
        if triage:
            log.error("outbox relay: %d row(s) moved to tidings_outbox_dead (see `tidings "
                      "outbox dead`): %s", len(triage.errors),
                      "; ".join(f"#{s} {e}" for s, e in list(triage.errors.items())[:3]))
        self.published += len(rows) - len(triage.errors)
        return len(rows)

    def _sendable(self, rows: Sequence[Row[Any]], triage: Triage,
                  limit: int | None) -> list[Row[Any]]:
        """The rows to send: not waiting behind a dead row, nor over the bus's limit."""
        sendable = []
        for row in rows:
            if triage.blocked(row):
                continue
            if limit is not None:
                try:
                    check_record_bytes([_record(row)], limit, "the bus")
                except MessageTooLargeError as exc:
                    triage.dead(row, exc)
                    continue
            sendable.append(row)
        return sendable

    async def _publish(self, rows: Sequence[Row[Any]]) -> None:
        if rows:
            await self._app._publish_batch([
                Outgoing(row.topic, row.value, row.key, json.loads(row.headers),
                         _delay(row.deliver_at))
                for row in rows
            ], "relay")

    async def _one_by_one(self, rows: Sequence[Row[Any]], triage: Triage) -> None:
        """Publish ``rows`` one at a time, in order: a row refused for good is dead, and
        its key's later rows wait behind it. A transient error stops the pass (what was
        published goes again, under the same ids)."""
        for row in rows:
            if triage.blocked(row):
                continue
            try:
                await self._publish([row])
            except PERMANENT as exc:
                triage.dead(row, exc)

    @staticmethod
    async def _settle(conn: AsyncConnection, rows: Sequence[Row[Any]], triage: Triage) -> None:
        """Move the dead rows aside and delete the published ones, in one transaction."""
        await move_dead(conn, rows, triage)
        done = [row for row in rows if row.seq not in triage.errors]
        if not done:
            return
        if not triage and len(rows) == rows[-1].seq - rows[0].seq + 1:  # no gaps: a range
            await conn.execute(_DELETE_RANGE, {"first": rows[0].seq, "last": rows[-1].seq})
        else:
            await conn.execute(_DELETE_SOME, {"seqs": [row.seq for row in done]})

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


def _record(row: Row[Any]) -> OutRecord:
    return OutRecord(row.topic, row.value, row.key, json.loads(row.headers))


def _delay(deliver_at: float | None) -> datetime | None:
    if deliver_at is None or deliver_at <= time.time():
        return None
    return datetime.fromtimestamp(deliver_at, UTC)
