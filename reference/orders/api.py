"""The orders HTTP API: ``POST /orders``, ``GET /orders/{order_id}``,
``GET /orders/{order_id}/history``, ``GET /orders``, ``GET /fraud-rules``.

Every order route wants the caller's user token and serves only the caller's orders
(another user's order is a 404, as if it did not exist); the fraud rules want the admin
token. An order carries a card token from the payments vault, never a card number.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Query, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..common.auth import ADMIN, Caller
from ..common.cards import CardToken
from ..common.events import Line, OrderCreated
from ..common.messaging import Tx
from ..common.service import Service
from ..common.web import ApiError, error_responses
from .fraud import FraudCheck, OrderCheck
from .store import CANCELLED, PENDING, OrderStore

__all__ = ["Accepted", "FraudRules", "HistoryEntry", "NewOrder", "OrderView", "add_routes"]

#: How long a new order waits for the bus to bring a just-registered user (or a just
#: listed product) into this service's replica before calling it unknown.
REPLICA_WAIT = 3.0

Sku = Annotated[str, StringConstraints(min_length=1, max_length=64)]
#: ``GET /orders`` pages: at most this many orders at a time.
PAGE_MAX, PAGE_DEFAULT = 100, 50
#: Where a page ends: the last order's creation time and id (``X-Next-Cursor``).
Cursor = Annotated[str, StringConstraints(pattern=r"^\d{1,12}\.\d{1,9}_[0-9a-f]{32}$")]


class LineIn(BaseModel):
    """One line of a new order."""

    model_config = ConfigDict(strict=True, extra="forbid")

    sku: Sku
    qty: int = Field(ge=1, le=1000)


class NewOrder(BaseModel):
    """``POST /orders`` body."""

    model_config = ConfigDict(strict=True, extra="forbid")

    user_id: int = Field(ge=1, le=2**62)
    items: list[LineIn] = Field(min_length=1, max_length=100)
    #: The payments service's token for the card (``POST /vault``), not its number.
    card_token: Annotated[str, StringConstraints(min_length=1, max_length=100)]


class Accepted(BaseModel):
    """``POST /orders`` answer: the order exists and its outcome will follow."""

    order_id: str
    status: str


class OrderView(BaseModel):
    """An order and where it is."""

    order_id: str
    user_id: int
    status: str
    reason: str | None
    total: float
    items: list[Line]
    created_at: float


class FraudRules(BaseModel):
    """``GET /fraud-rules``: the active rules, and why the rule file did not load."""

    rules: list[str]
    error: str | None


class HistoryEntry(BaseModel):
    """One event of an order's history."""

    version: int
    type: str
    at: float
    data: dict[str, Any]


#: Starts the order's flow (its ``ORDER_CREATED``) inside the transaction that inserts it.
Starter = Callable[[Tx, OrderCreated], Awaitable[None]]


def _view(row: dict[str, Any]) -> OrderView:
    return OrderView(
        order_id=row["order_id"], user_id=row["user_id"], status=row["status"],
        reason=row["reason"], total=row["total_cents"] / 100,
        items=[Line.model_validate(i) for i in json.loads(row["items"])],
        created_at=row["created_at"],
    )


def _missing(store: OrderStore, order: NewOrder) -> str | None:
    if order.user_id not in store.known_users:
        return f"unknown user {order.user_id}"
    unknown = sorted({line.sku for line in order.items} - store.known_prices.keys())
    return f"unknown sku {unknown[0]!r}" if unknown else None


async def _total(store: OrderStore, order: NewOrder) -> int:
    """Check the order against the replicas (waiting briefly for them); its total."""
    deadline = time.monotonic() + REPLICA_WAIT
    while (missing := _missing(store, order)) is not None:
        if time.monotonic() > deadline:
            raise ApiError(422, missing)
        await asyncio.sleep(0.05)
    return sum(store.known_prices[line.sku] * line.qty for line in order.items)


def _cursor(row: dict[str, Any]) -> str:
    return f"{row['created_at']:.6f}_{row['order_id']}"


def add_routes(service: Service, store: OrderStore, fraud: FraudCheck, start: Starter) -> None:
    """Add the order routes; ``start`` begins a new order's flow in its transaction."""
    api = service.api

    async def owned(order_id: str, user_id: int) -> dict[str, Any]:
        async with service.db.read() as conn:
            row = await store.get(conn, order_id)
        if row is None or row["user_id"] != user_id:
            raise ApiError(404, f"no order {order_id!r}")
        return row

    @api.post("/orders", status_code=202, response_model=Accepted,
              responses=error_responses(401, 403, 413, 422), tags=["orders"])
    async def place_order(order: NewOrder, user_id: Caller) -> Accepted:
        """Accept the caller's order (PENDING); stock, payment and the outcome follow on
        the bus. An order a fraud rule stops is CANCELLED at once (reason
        ``fraud: <rule>``)."""
        if order.user_id != user_id:
            raise ApiError(403, "an order is placed by its own user only")
        card = CardToken.decode(service.settings, order.card_token, user_id)
        if card is None:
            raise ApiError(422, "invalid card token (get one from the payments "
                                "service's POST /vault)")
        total = await _total(store, order)
        created = OrderCreated(
            order_id=uuid.uuid4().hex, user_id=order.user_id, total_cents=total,
            items=tuple(Line(sku=i.sku, qty=i.qty) for i in order.items),
            card_token=order.card_token, card_last4=card.last4)
        cancel = await fraud.verdict(OrderCheck(
            order_id=created.order_id, user_id=order.user_id, total_cents=total,
            lines=len(order.items),
            account_age_s=time.time() - store.known_users[order.user_id]))
        async def record(tx: Tx) -> None:
            await store.insert(tx, created, cancel)
            if cancel is None:
                await start(tx, created)

        await service.uow.run(record)
        return Accepted(order_id=created.order_id,
                        status=PENDING if cancel is None else CANCELLED)

    @api.get("/orders/{order_id}", response_model=OrderView,
             responses=error_responses(401, 404), tags=["orders"])
    async def get_order(order_id: str, user_id: Caller) -> OrderView:
        """One of the caller's orders: PENDING, CONFIRMED or CANCELLED (with the
        reason)."""
        return _view(await owned(order_id, user_id))

    @api.get("/orders/{order_id}/history", response_model=list[HistoryEntry],
             responses=error_responses(401, 404), tags=["orders"])
    async def order_history(order_id: str, user_id: Caller) -> list[dict[str, Any]]:
        """One of the caller's orders' events, oldest first (event-sourced)."""
        await owned(order_id, user_id)
        history = await store.history.read(order_id)
        if not history:
            raise ApiError(404, f"no order {order_id!r}")
        return history

    @api.get("/fraud-rules", response_model=FraudRules, responses=error_responses(401),
             tags=["ops"], dependencies=[ADMIN])
    async def fraud_rules() -> FraudRules:
        """The fraud rules in force, and the rule file's error if it does not load
        (admin token)."""
        error = fraud.status_error()
        if error is not None:  # where the file lives is the server's business
            error = error.replace(str(fraud.path), fraud.path.name)
        return FraudRules(error=error, rules=fraud.engine.rule_names if fraud.engine else [])

    @api.get("/orders", response_model=list[OrderView],
             responses=error_responses(401, 403, 422), tags=["orders"])
    async def list_orders(
        caller_id: Caller, response: Response,
        user_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
        limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = PAGE_DEFAULT,
        cursor: Annotated[Cursor | None, Query()] = None,
    ) -> list[OrderView]:
        """The caller's orders, newest first, ``limit`` at a time: when there are more,
        the ``X-Next-Cursor`` header is the ``cursor`` of the next page."""
        if user_id is not None and user_id != caller_id:
            raise ApiError(403, "a user's orders are theirs only")
        after = None
        if cursor is not None:
            at, _, order_id = cursor.partition("_")
            after = (float(at), order_id)
        async with service.db.read() as conn:
            rows = await store.by_user(conn, caller_id, limit + 1, after)
        if len(rows) > limit:
            rows = rows[:limit]
            response.headers["x-next-cursor"] = _cursor(rows[-1])
        return [_view(row) for row in rows]
