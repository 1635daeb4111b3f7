"""The orders HTTP API: ``POST /orders``, ``GET /orders/{order_id}``,
``GET /orders/{order_id}/history``, ``GET /orders``."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from ..common.cards import luhn_valid, normalize_card
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
    #: Spaces and dashes between digit groups are accepted and dropped here, so every
    #: client (the page, curl, another service) may send the number as people write it.
    card_number: Annotated[str, StringConstraints(min_length=1, max_length=40),
                           AfterValidator(normalize_card)]


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
    """``GET /fraud-rules``: the rule file, its active rules, and why it did not load."""

    path: str
    rules: list[str]
    error: str | None


class HistoryEntry(BaseModel):
    """One event of an order's history."""

    version: int
    type: str
    at: float
    data: dict[str, Any]


#: Starts the order's flow inside the transaction that inserts it.
Starter = Callable[[Tx, str, NewOrder, int], Awaitable[None]]


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


def add_routes(service: Service, store: OrderStore, fraud: FraudCheck, start: Starter) -> None:
    """Add the order routes; ``start`` begins a new order's flow in its transaction."""
    api = service.api

    @api.post("/orders", status_code=202, response_model=Accepted,
              responses=error_responses(413, 422), tags=["orders"])
    async def place_order(order: NewOrder) -> Accepted:
        """Accept an order (PENDING); stock, payment and the outcome follow on the bus.
        An order a fraud rule stops is CANCELLED at once (reason ``fraud: <rule>``)."""
        if not luhn_valid(order.card_number):
            raise ApiError(422, "invalid card number")
        total = await _total(store, order)
        created = OrderCreated(
            order_id=uuid.uuid4().hex, user_id=order.user_id, total_cents=total,
            items=tuple(Line(sku=i.sku, qty=i.qty) for i in order.items),
            card_number=order.card_number)
        cancel = await fraud.verdict(OrderCheck(
            order_id=created.order_id, user_id=order.user_id, total_cents=total,
            lines=len(order.items),
            account_age_s=time.time() - store.known_users[order.user_id]))
        async def record(tx: Tx) -> None:
            await store.insert(tx, created, cancel)
            if cancel is None:
                await start(tx, created.order_id, order, total)

        await service.uow.run(record)
        return Accepted(order_id=created.order_id,
                        status=PENDING if cancel is None else CANCELLED)

    @api.get("/orders/{order_id}", response_model=OrderView,
             responses=error_responses(404), tags=["orders"])
    async def get_order(order_id: str) -> OrderView:
        """One order: PENDING, CONFIRMED or CANCELLED (with the reason)."""
        async with service.db.read() as conn:
            row = await store.get(conn, order_id)
        if row is None:
            raise ApiError(404, f"no order {order_id!r}")
        return _view(row)

    @api.get("/orders/{order_id}/history", response_model=list[HistoryEntry],
             responses=error_responses(404), tags=["orders"])
    async def order_history(order_id: str) -> list[dict[str, Any]]:
        """The order's events, oldest first (event-sourced)."""
        history = await store.history.read(order_id)
        if not history:
            raise ApiError(404, f"no order {order_id!r}")
        return history

    @api.get("/fraud-rules", response_model=FraudRules, tags=["ops"])
    async def fraud_rules() -> FraudRules:
        """The fraud rules in force, and the rule file's error if it does not load."""
        error = fraud.status_error()
        return FraudRules(path=str(fraud.path), error=error,
                          rules=fraud.engine.rule_names if fraud.engine else [])

    @api.get("/orders", response_model=list[OrderView], responses=error_responses(422),
             tags=["orders"])
    async def list_orders(user_id: Annotated[int, Query(ge=1, le=2**62)]) -> list[OrderView]:
        """A user's orders, newest first."""
        async with service.db.read() as conn:
            rows = await store.by_user(conn, user_id)
        return [_view(row) for row in rows]
