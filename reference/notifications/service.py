"""notifications: logs ``Received registration event for user <id> (<username>)`` once
per user, across restarts and redeliveries.

Its own consumer group on ``users`` sees every registration. The inbox makes the log line
an exactly-once effect: it is written only by the handler's transaction that records the
message as handled, and a message the inbox already holds is skipped.
"""

from __future__ import annotations

import logging

from sqlalchemy import Column, Integer, MetaData, String, Table, func, select
from sqlalchemy.dialects.sqlite import insert

from tidings import Message

from ..common.auth import ADMIN
from ..common.events import Topics, UserRegistered
from ..common.messaging import Tx
from ..common.service import Service
from ..common.settings import Settings

__all__ = ["build"]

log = logging.getLogger("reference.notifications")


def build(settings: Settings) -> Service:
    """The notifications service."""
    metadata = MetaData()
    sent = Table(
        "notifications", metadata,
        Column("user_id", Integer, primary_key=True),
        Column("username", String, nullable=False),
    )
    service = Service("notifications", settings, metadata)
    uow = service.uow

    @service.bus.subscriber(Topics.USERS, group="notifications", concurrency=8)
    async def on_user_registered(event: UserRegistered, message: Message) -> None:
        async def record(tx: Tx) -> bool:
            row = {"user_id": event.userId, "username": event.username}
            result = await tx.conn.execute(insert(sent).values(row).on_conflict_do_nothing())
            return result.rowcount == 1  # else notified before, under another message id

        if not await uow.handle(message, "notifications", record):
            return
        # After the commit: a crash before it redelivers; after it, the inbox holds it.
        log.info("Received registration event for user %s (%s)", event.userId, event.username)

    @service.api.get("/notifications/count", tags=["notifications"],
                     dependencies=[ADMIN])
    async def count() -> dict[str, int]:
        """How many users were notified (admin token)."""
        async with service.db.read() as conn:
            total = (await conn.execute(select(func.count()).select_from(sent))).scalar_one()
        return {"count": int(total)}

    return service
