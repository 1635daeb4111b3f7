"""Events and envelopes for the rules tests."""

from __future__ import annotations

import json
import uuid
from typing import Any

from pydantic import BaseModel, Field

from tidings import Message


class Card(BaseModel):
    country: str
    last4: str


class Payment(BaseModel):
    type: str
    user_id: int = Field(alias="userId")
    order_id: str = Field(alias="orderId")
    amount: float
    status: str
    card: Card
    tags: list[str] = []
    note: str | None = None


def payment(user: int = 1, status: str = "declined", amount: float = 10.0,
            country: str = "FR", **extra: Any) -> Payment:
    return Payment.model_validate({
        "type": "PAYMENT", "userId": user, "orderId": f"o-{user}", "amount": amount,
        "status": status, "card": {"country": country, "last4": "4242"}, **extra})


def envelope(event: BaseModel | dict[str, Any], *, topic: str = "payments", at: float = 1e9,
             key: str | None = None, headers: dict[str, str] | None = None,
             message_id: str | None = None) -> Message:
    body = event.model_dump_json(by_alias=True).encode() if isinstance(event, BaseModel) \
        else json.dumps(event).encode()
    return Message(id=message_id or uuid.uuid4().hex, topic=topic, partition=0, offset=0,
                   key=key, headers=headers or {}, timestamp=at, attempt=1,
                   correlation_id=None, causation_id=None, body=body)
