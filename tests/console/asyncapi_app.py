"""An app for ``tidings asyncapi`` tests; ``ASYNCAPI_VARIANT`` changes its contract."""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from tidings import App

VARIANT = os.environ.get("ASYNCAPI_VARIANT", "v1")


Total = str if VARIANT == "type-changed" else int


class Line(BaseModel):
    sku: str
    qty: int


class OrderCreated(BaseModel):
    type: Literal["ORDER_CREATED"] = "ORDER_CREATED"
    order_id: str
    items: tuple[Line, ...]
    total_cents: Total
    note: str | None = None
    if VARIANT == "required-added":
        currency: str
    if VARIANT == "optional-added":
        coupon: str | None = None


class OrderCancelled(BaseModel):
    type: Literal["ORDER_CANCELLED"] = "ORDER_CANCELLED"
    order_id: str
    reason: str


OrderEvent = Annotated[OrderCreated | OrderCancelled, Field(discriminator="type")]


class Confirmation(BaseModel):
    order_id: str


app = App("orders", broker="memory://asyncapi")


@app.subscriber("orders")
async def on_order(event: OrderEvent) -> None:
    """Handle an order event."""


@app.worker("emails")
async def send_email(job: dict[str, str]) -> None:
    """Send one email."""


@app.responder("quote")
async def quote(order: OrderCreated) -> int:
    """Price an order."""
    return order.total_cents if isinstance(order.total_cents, int) else 0


if VARIANT != "topic-removed":
    @app.publishes("confirmations", Confirmation)
    async def confirm(order_id: str) -> None:
        await app.publish("confirmations", Confirmation(order_id=order_id))
