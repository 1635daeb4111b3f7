"""The orders database: orders, plus local replicas of the users and the catalog.

The replicas are fed from the bus (``users`` and ``products``): orders validates a new
order against them without asking another service over HTTP. An order moves only from
PENDING to CONFIRMED or CANCELLED, once; a repeated transition is a no-op, so handlers
are idempotent by the order id. Each order's events are also kept, event-sourced, as its
history (:mod:`reference.orders.history`), in the same transactions.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.sqlalchemy import execute_dml

from ..common.events import OrderCancelled, OrderConfirmed, OrderCreated, Topics
from ..common.messaging import Tx
from .history import History

__all__ = ["CANCELLED", "CONFIRMED", "PENDING", "OrderStore"]

PENDING, CONFIRMED, CANCELLED = "PENDING", "CONFIRMED", "CANCELLED"


class OrderStore:
    """The orders service's tables and their operations."""

    def __init__(self, metadata: MetaData, history: History) -> None:
        self.history = history
        self.orders = Table(
            "orders", metadata,
            Column("order_id", String, primary_key=True),
            Column("user_id", Integer, nullable=False, index=True),
            Column("status", String, nullable=False),
            Column("reason", String),
            Column("total_cents", Integer, nullable=False),
            Column("items", String, nullable=False),
            Column("created_at", Float, nullable=False),
            Column("finished_at", Float),
        )
        self.users = Table("known_users", metadata,
                           Column("user_id", Integer, primary_key=True),
                           Column("registered_at", Float))
        self.catalog = Table(
            "catalog", metadata,
            Column("sku", String, primary_key=True),
            Column("name", String, nullable=False),
            Column("price_cents", Integer, nullable=False),
        )
        #: The replicas in memory too (loaded at start, kept current by the handlers),
        #: so taking an order reads nothing.
        #: user id -> when the registration reached the bus (the fraud rules' account age).
        self.known_users: dict[int, float] = {}
        self.known_prices: dict[str, int] = {}
        o = self.orders.c
        # Built once, run with new values by execute_dml (on the sqlite3 connection
        # itself on the service's SQLite: SQLAlchemy's machinery costs more than they do).
        self._insert = insert(self.orders)
        self._finish = update(self.orders).where(
            o.order_id == bindparam("oid"), o.status == PENDING,
        ).values(status=bindparam("new_status"), reason=bindparam("new_reason"),
                 finished_at=bindparam("at"))
        self._know_user = insert(self.users).on_conflict_do_nothing()

    async def load(self, conn: AsyncConnection) -> None:
        """Fill the in-memory replicas from the database."""
        users = await conn.execute(select(self.users.c.user_id, self.users.c.registered_at))
        self.known_users = {row.user_id: row.registered_at or 0.0 for row in users}
        rows = await conn.execute(select(self.catalog.c.sku, self.catalog.c.price_cents))
        self.known_prices = {row.sku: row.price_cents for row in rows}

    async def insert(self, tx: Tx, order: OrderCreated, cancel: str | None = None) -> None:
        """A new PENDING order, or one CANCELLED at once for ``cancel`` (announced)."""
        now = time.time()
        await execute_dml(tx.conn, self._insert, {
            "order_id": order.order_id, "user_id": order.user_id,
            "status": PENDING if cancel is None else CANCELLED,
            "total_cents": order.total_cents, "reason": cancel,
            "finished_at": None if cancel is None else now,
            "items": json.dumps([line.model_dump() for line in order.items]),
            "created_at": now,
        })
        cancelled = None
        if cancel is not None:
            cancelled = OrderCancelled(order_id=order.order_id, reason=cancel)
            await tx.emit(Topics.ORDERS, cancelled, key=order.order_id)
        await self.history.opened(tx, order, cancelled)

    async def finish(self, tx: Tx, order_id: str, status: str, reason: str | None = None
                     ) -> bool:
        """Move a PENDING order to ``status`` and announce it; False if it was final."""
        changed = await execute_dml(tx.conn, self._finish, {
            "oid": order_id, "new_status": status, "new_reason": reason, "at": time.time()})
        if changed == 0:
            return False
        event: OrderConfirmed | OrderCancelled
        if status == CONFIRMED:
            event = OrderConfirmed(order_id=order_id)
        else:
            event = OrderCancelled(order_id=order_id, reason=reason or "")
        await tx.emit(Topics.ORDERS, event, key=order_id)
        await self.history.closed(tx, event)
        return True

    async def get(self, conn: AsyncConnection, order_id: str) -> dict[str, Any] | None:
        """One order as a dict, or None."""
        row = (await conn.execute(
            select(self.orders).where(self.orders.c.order_id == order_id))).first()
        return None if row is None else row._asdict()

    async def by_user(self, conn: AsyncConnection, user_id: int, limit: int,
                      after: tuple[float, str] | None = None) -> list[dict[str, Any]]:
        """Up to ``limit`` of a user's orders, newest first; with ``after`` (a creation
        time and order id), only those that come after it in that order."""
        o = self.orders.c
        # The cursor's time goes through text: order and compare to the microsecond.
        created = func.round(o.created_at, 6)
        query = select(self.orders).where(o.user_id == user_id)
        if after is not None:
            query = query.where(or_(created < after[0],
                                    and_(created == after[0], o.order_id < after[1])))
        rows = await conn.execute(
            query.order_by(created.desc(), o.order_id.desc()).limit(limit))
        return [row._asdict() for row in rows]

    async def know_user(self, tx: Tx, user_id: int, registered_at: float) -> None:
        """Record that a user exists (from ``USER_REGISTERED``, published at
        ``registered_at``)."""
        await tx.conn.execute(self._know_user, {"user_id": user_id,
                                                "registered_at": registered_at})
        self.known_users.setdefault(user_id, registered_at)

    async def list_product(self, tx: Tx, sku: str, name: str, price_cents: int) -> None:
        """Add or update a catalog entry (from ``PRODUCT_LISTED``)."""
        row = {"sku": sku, "name": name, "price_cents": price_cents}
        await tx.conn.execute(insert(self.catalog).values(row).on_conflict_do_update(
            index_elements=["sku"], set_={"name": name, "price_cents": price_cents}))
        self.known_prices[sku] = price_cents
