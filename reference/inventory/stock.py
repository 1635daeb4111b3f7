"""Stock: reserve, sell (commit) and release, each idempotent per order.

Every operation runs inside the caller's unit of work and emits its outcome as an event
on ``inventory``. A reservation row per order is the natural idempotency key: a repeated
request re-announces the recorded outcome instead of touching stock again (a saga that
re-sends a command gets its reply), so per SKU ``initial = available + reserved + sold``
always holds.
"""

from __future__ import annotations

import json

from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    insert,
    select,
    update,
)

from ..common.events import (
    Line,
    StockCommitted,
    StockRejected,
    StockReleased,
    StockReserved,
    Topics,
)
from ..common.messaging import Tx

__all__ = ["OUT_OF_STOCK", "Stock", "StockEvent"]

StockEvent = StockReserved | StockRejected | StockCommitted | StockReleased

OUT_OF_STOCK = "out of stock"
RESERVED, REJECTED, COMMITTED, RELEASED = "RESERVED", "REJECTED", "COMMITTED", "RELEASED"


class Stock:
    """The inventory tables and what can be done to them."""

    def __init__(self, metadata: MetaData) -> None:
        self.products = Table(
            "products", metadata,
            Column("sku", String, primary_key=True),
            Column("name", String, nullable=False),
            Column("price_cents", Integer, nullable=False),
            Column("available", Integer, nullable=False),
            Column("reserved", Integer, nullable=False, default=0),
            Column("sold", Integer, nullable=False, default=0),
        )
        self.reservations = Table(
            "reservations", metadata,
            Column("order_id", String, primary_key=True),
            Column("items", String, nullable=False),
            Column("status", String, nullable=False),
        )
        self._statements()

    def _statements(self) -> None:
        # Built once: SQLAlchemy caches a statement's compiled form on the object, so
        # reusing it with new parameters skips rebuilding it for every message.
        p, r = self.products, self.reservations
        self._find = select(r.c.status, r.c["items"]).where(r.c.order_id == bindparam("oid"))
        self._levels = select(p.c.sku, p.c.available).where(
            p.c.sku.in_(bindparam("skus", expanding=True)))
        self._move = update(p).where(p.c.sku == bindparam("k")).values(
            available=p.c.available + bindparam("d_available"),
            reserved=p.c.reserved + bindparam("d_reserved"),
            sold=p.c.sold + bindparam("d_sold"),
        )
        self._insert = insert(r)
        self._set_status = update(r).where(r.c.order_id == bindparam("oid")).values(
            status=bindparam("new_status"))

    async def _status(self, tx: Tx, order_id: str) -> tuple[str, list[Line]] | None:
        row = (await tx.conn.execute(self._find, {"oid": order_id})).first()
        if row is None:
            return None
        return row.status, [Line.model_validate(i) for i in json.loads(row.items)]

    async def reserve(self, tx: Tx, order_id: str, items: tuple[Line, ...]) -> StockEvent:
        """Hold every line's quantity for the order, or none of them (out of stock)."""
        known = await self._status(tx, order_id)
        if known is not None:
            return await self._announce(tx, order_id, known[0])
        needed = _merge(items)
        rows = (await tx.conn.execute(self._levels, {"skus": list(needed)})).all()
        stock = {row.sku: row.available for row in rows}
        ok = all(stock.get(sku, 0) >= qty for sku, qty in needed.items())
        status = RESERVED if ok else REJECTED
        if ok:
            await self._apply(tx, [(sku, -qty, qty, 0) for sku, qty in needed.items()])
        lines = json.dumps([line.model_dump() for line in items])
        await tx.conn.execute(self._insert, {"order_id": order_id, "items": lines,
                                             "status": status})
        return await self._announce(tx, order_id, status)

    async def commit(self, tx: Tx, order_id: str) -> StockEvent:
        """The order is paid: its reservation becomes a sale."""
        return await self._settle(tx, order_id, COMMITTED)

    async def release(self, tx: Tx, order_id: str) -> StockEvent:
        """The order failed: its reserved stock is available again (compensation)."""
        return await self._settle(tx, order_id, RELEASED)

    async def _settle(self, tx: Tx, order_id: str, outcome: str) -> StockEvent:
        known = await self._status(tx, order_id)
        if known is None:
            # The order never reserved anything (a release after a rejection, say):
            # record the outcome so a late reservation request cannot take stock.
            await tx.conn.execute(self._insert, {"order_id": order_id, "items": "[]",
                                                 "status": outcome})
        elif known[0] == RESERVED:
            sold = outcome == COMMITTED
            await self._apply(tx, [(line.sku, 0 if sold else line.qty, -line.qty,
                                    line.qty if sold else 0) for line in known[1]])
            await tx.conn.execute(self._set_status, {"oid": order_id, "new_status": outcome})
        else:
            outcome = known[0]
        return await self._announce(tx, order_id, outcome)

    async def _apply(self, tx: Tx, moves: list[tuple[str, int, int, int]]) -> None:
        """Per (sku, available, reserved, sold) change, in one executemany."""
        await tx.conn.execute(self._move, [
            {"k": sku, "d_available": a, "d_reserved": r, "d_sold": s}
            for sku, a, r, s in moves
        ])

    async def _announce(self, tx: Tx, order_id: str, status: str) -> StockEvent:
        events: dict[str, StockEvent] = {
            RESERVED: StockReserved(order_id=order_id),
            REJECTED: StockRejected(order_id=order_id, reason=OUT_OF_STOCK),
            COMMITTED: StockCommitted(order_id=order_id),
            RELEASED: StockReleased(order_id=order_id),
        }
        event = events[status]
        await tx.emit(Topics.INVENTORY, event, key=order_id)
        return event


def _merge(items: tuple[Line, ...]) -> dict[str, int]:
    needed: dict[str, int] = {}
    for line in items:
        needed[line.sku] = needed.get(line.sku, 0) + line.qty
    return needed
