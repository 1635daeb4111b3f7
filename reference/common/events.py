"""The messages services exchange: the system's contracts, one place for every service.

Events say what happened (past tense, on the publishing service's topic); commands, used
only in orchestration mode, ask one service to act (on ``<service>-commands``). Every
order message is keyed by its order id, so one order's messages stay in order.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CHOREOGRAPHY_TOPICS",
    "INVENTORY_COMMANDS",
    "PAYMENTS_COMMANDS",
    "ChargePayment",
    "CommitStock",
    "InventoryCommand",
    "InventoryEvent",
    "Line",
    "OrderCancelled",
    "OrderConfirmed",
    "OrderCreated",
    "OrderEvent",
    "PaymentCommand",
    "PaymentDeclined",
    "PaymentEvent",
    "PaymentRefunded",
    "PaymentSucceeded",
    "ProductListed",
    "RefundPayment",
    "ReleaseStock",
    "ReserveStock",
    "StockCommitted",
    "StockRejected",
    "StockReleased",
    "StockReserved",
    "Topics",
    "UserRegistered",
]


class Topics:
    """Topic names."""

    USERS = "users"
    PRODUCTS = "products"
    ORDERS = "orders"
    INVENTORY = "inventory"
    PAYMENTS = "payments"


INVENTORY_COMMANDS = "inventory-commands"
PAYMENTS_COMMANDS = "payments-commands"
CHOREOGRAPHY_TOPICS = (Topics.ORDERS, Topics.INVENTORY, Topics.PAYMENTS)


class _Msg(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class UserRegistered(_Msg):
    """The article's event, in its exact format."""

    type: Literal["USER_REGISTERED"] = "USER_REGISTERED"
    userId: int
    username: str


class ProductListed(_Msg):
    """Inventory put a product in the catalog (or changed its name or price)."""

    type: Literal["PRODUCT_LISTED"] = "PRODUCT_LISTED"
    sku: str
    name: str
    price_cents: int


class Line(_Msg):
    """One order line."""

    sku: str
    qty: int


class _OrderMsg(_Msg):
    order_id: str


class OrderCreated(_OrderMsg):
    type: Literal["ORDER_CREATED"] = "ORDER_CREATED"
    user_id: int
    items: tuple[Line, ...]
    total_cents: int
    #: The payments vault's token for the card (never the number: this event is kept
    #: for days and every consumer group reads it).
    card_token: str
    card_last4: str


class OrderConfirmed(_OrderMsg):
    type: Literal["ORDER_CONFIRMED"] = "ORDER_CONFIRMED"


class OrderCancelled(_OrderMsg):
    type: Literal["ORDER_CANCELLED"] = "ORDER_CANCELLED"
    reason: str


class StockReserved(_OrderMsg):
    type: Literal["STOCK_RESERVED"] = "STOCK_RESERVED"


class StockRejected(_OrderMsg):
    type: Literal["STOCK_REJECTED"] = "STOCK_REJECTED"
    reason: str


class StockCommitted(_OrderMsg):
    type: Literal["STOCK_COMMITTED"] = "STOCK_COMMITTED"


class StockReleased(_OrderMsg):
    type: Literal["STOCK_RELEASED"] = "STOCK_RELEASED"


class PaymentSucceeded(_OrderMsg):
    type: Literal["PAYMENT_SUCCEEDED"] = "PAYMENT_SUCCEEDED"
    amount_cents: int


class PaymentDeclined(_OrderMsg):
    type: Literal["PAYMENT_DECLINED"] = "PAYMENT_DECLINED"
    reason: str


class PaymentRefunded(_OrderMsg):
    type: Literal["PAYMENT_REFUNDED"] = "PAYMENT_REFUNDED"
    amount_cents: int


class ReserveStock(_OrderMsg):
    type: Literal["RESERVE_STOCK"] = "RESERVE_STOCK"
    items: tuple[Line, ...]


class CommitStock(_OrderMsg):
    type: Literal["COMMIT_STOCK"] = "COMMIT_STOCK"


class ReleaseStock(_OrderMsg):
    type: Literal["RELEASE_STOCK"] = "RELEASE_STOCK"


class ChargePayment(_OrderMsg):
    type: Literal["CHARGE_PAYMENT"] = "CHARGE_PAYMENT"
    user_id: int
    amount_cents: int
    card_token: str


class RefundPayment(_OrderMsg):
    type: Literal["REFUND_PAYMENT"] = "REFUND_PAYMENT"


OrderEvent = Annotated[
    OrderCreated | OrderConfirmed | OrderCancelled, Field(discriminator="type")
]
InventoryEvent = Annotated[
    StockReserved | StockRejected | StockCommitted | StockReleased, Field(discriminator="type")
]
PaymentEvent = Annotated[
    PaymentSucceeded | PaymentDeclined | PaymentRefunded, Field(discriminator="type")
]
InventoryCommand = Annotated[
    ReserveStock | CommitStock | ReleaseStock, Field(discriminator="type")
]
PaymentCommand = Annotated[ChargePayment | RefundPayment, Field(discriminator="type")]
