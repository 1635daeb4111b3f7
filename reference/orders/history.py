"""Each order's history, event-sourced (``GET /orders/{order_id}/history``).

An :class:`OrderHistory` aggregate per order keeps the order's own events,
``OrderCreated`` then ``OrderConfirmed`` or ``OrderCancelled``, in the orders database
(:mod:`tidings.eventsourcing`). They are saved in the transaction that inserts or
finishes the order, so the history and the ``orders`` row never disagree. The aggregate
has no topic: the same events already reach the bus through the outbox.

Orders never sees a card number: an ``OrderCreated`` carries the payments vault's token
and the last four digits only.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.eventsourcing import Aggregate, EventRegistry
from tidings.eventsourcing.sqlalchemy import EventStore

from ..common.events import OrderCancelled, OrderConfirmed, OrderCreated
from ..common.messaging import Tx

__all__ = ["History", "OrderHistory"]

EVENTS = EventRegistry(OrderCreated, OrderConfirmed, OrderCancelled)


class OrderHistory(Aggregate):
    """One order's events; its state is only where the order is."""

    topic = None  # the outbox publishes these events already
    status: str

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.status = "NEW"

    def apply(self, event: BaseModel) -> None:
        """PENDING on creation, then CONFIRMED or CANCELLED."""
        match event:
            case OrderCreated():
                self.status = "PENDING"
            case OrderConfirmed():
                self.status = "CONFIRMED"
            case OrderCancelled():
                self.status = "CANCELLED"


class History:
    """The event store of order histories, on the orders database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.store = EventStore(engine, EVENTS, snapshot_every=50)

    async def opened(self, tx: Tx, event: OrderCreated,
                     cancelled: OrderCancelled | None = None) -> None:
        """A new order's history (with its cancellation when it never got going)."""
        history = OrderHistory(event.order_id)
        history.record(event)
        if cancelled is not None:
            history.record(cancelled)
        await self.store.save(history, session=tx.conn)

    async def closed(self, tx: Tx, event: OrderConfirmed | OrderCancelled) -> None:
        """Add the order's outcome to its history.

        The ``orders`` row has just moved from PENDING, once, in this transaction, and a
        PENDING order's history holds its creation only (an order cancelled when it was
        created never is PENDING): the outcome is version 2, with nothing to read or
        replay. Were the history anything else, the event store's version check raises
        :class:`~tidings.eventsourcing.ConcurrencyConflictError`, which rolls the whole
        transaction back.
        """
        history = OrderHistory(event.order_id)
        history.status, history.version = "PENDING", 1
        history.record(event)
        await self.store.save(history, session=tx.conn)

    async def read(self, order_id: str) -> list[dict[str, Any]]:
        """The order's events, oldest first: version, type, time and data."""
        return [{"version": r.version, "type": type(r.event).__name__,
                 "at": r.recorded_at, "data": r.event.model_dump(mode="json")}
                for r in await self.store.history(order_id)]
