"""A saga state shared by the observability tests."""

from __future__ import annotations

from pydantic import BaseModel


class Order(BaseModel):
    order_id: str
