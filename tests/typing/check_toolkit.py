"""Checked by mypy (``make lint``), not run: the toolkit's decorators keep types too."""

from __future__ import annotations

from datetime import datetime
from typing import assert_type

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from tidings import App, Message, cron
from tidings.sqlalchemy import Inbox


class Paid(BaseModel):
    order_id: str


app = App("typed-toolkit", broker="memory://typing")
inbox = Inbox(create_async_engine("sqlite+aiosqlite://"), consumer="billing")


@app.subscriber("payments")
@inbox.idempotent
async def on_paid(event: Paid, session: AsyncSession) -> int:
    return 1


@cron(app, "*/5 * * * *")
async def rollup(tick: datetime) -> None: ...


@app.cron("0 * * * *", catch_up="skip")
async def hourly() -> int:
    return 0


async def calls_keep_their_types(message: Message) -> None:
    # The inbox wrapper takes (payload, Message) and returns None for a duplicate.
    assert_type(await on_paid(Paid(order_id="o-1"), message), int | None)
    assert_type(await rollup(datetime.now()), None)
    assert_type(await hourly(), int)
