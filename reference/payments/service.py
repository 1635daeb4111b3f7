"""payments: ``POST /vault``, ``GET /payments/{order_id}``; charges orders whose stock is
reserved.

``POST /vault`` is the gateway's tokenization API: the shop's page sends it the card
number and puts the token it gets back in the order, so the number never reaches orders
or the bus (:mod:`reference.payments.gateway`).

Choreography: ``ORDER_CREATED`` on ``orders`` records what to charge (amount and card
token);
``STOCK_RESERVED`` on ``inventory`` charges it; ``ORDER_CANCELLED`` refunds a charge, if
one was made. Orchestration: ``CHARGE_PAYMENT`` and ``REFUND_PAYMENT`` commands on
``payments-commands``. The outcome is an event on ``payments``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints
from sqlalchemy import MetaData, bindparam, select
from sqlalchemy.dialects.sqlite import insert

from tidings import Message

from ..common.auth import Caller
from ..common.cards import luhn_valid, normalize_card
from ..common.events import (
    PAYMENTS_COMMANDS,
    ChargePayment,
    InventoryEvent,
    OrderCancelled,
    OrderCreated,
    OrderEvent,
    PaymentCommand,
    StockReserved,
    Topics,
)
from ..common.messaging import Tx
from ..common.service import Service
from ..common.settings import Mode, Settings
from ..common.web import ApiError, error_responses
from .gateway import Ledger, PaymentEvent

__all__ = ["NewCard", "PaymentView", "VaultedCard", "build"]

CONCURRENCY = 32


class PaymentView(BaseModel):
    """``GET /payments/{order_id}``."""

    order_id: str
    status: str
    amount: float


class NewCard(BaseModel):
    """``POST /vault`` body."""

    model_config = ConfigDict(strict=True, extra="forbid")

    #: Spaces and dashes between digit groups are accepted and dropped here, so every
    #: client (the page, curl, another service) may send the number as people write it.
    card_number: Annotated[str, StringConstraints(min_length=1, max_length=40),
                           AfterValidator(normalize_card)]


class VaultedCard(BaseModel):
    """``POST /vault`` answer: what an order carries instead of the card number."""

    card_token: str
    last4: str


class IntentMissingError(Exception):
    """Stock was reserved for an order whose ``ORDER_CREATED`` has not arrived yet (the
    topics are consumed independently); retrying waits for it."""


def build(settings: Settings) -> Service:
    """The payments service."""
    metadata = MetaData()
    ledger = Ledger(metadata, settings)
    service = Service("payments", settings, metadata)
    _routes(service, ledger)
    if settings.mode is Mode.ORCHESTRATION:
        _command_handlers(service, ledger)
    else:
        _event_handlers(service, ledger)
    return service


def _routes(service: Service, ledger: Ledger) -> None:

    @service.api.post("/vault", status_code=201, response_model=VaultedCard,
                      responses=error_responses(401, 413, 422), tags=["payments"])
    async def vault(card: NewCard, user_id: Caller) -> VaultedCard:
        """Tokenize the caller's card number for their orders."""
        if not luhn_valid(card.card_number):
            raise ApiError(422, "invalid card number")
        async with service.db.write() as conn:
            token = await ledger.tokenize(conn, user_id, card.card_number)
        return VaultedCard(card_token=token.encode(service.settings), last4=token.last4)

    @service.api.get("/payments/{order_id}", response_model=PaymentView,
                     responses=error_responses(401, 404), tags=["payments"])
    async def get_payment(order_id: str, user_id: Caller) -> PaymentView:
        """The caller's order's payment: SUCCEEDED, DECLINED or REFUNDED, and its
        amount (404 for another user's order)."""
        t = ledger.payments
        async with service.db.read() as conn:
            row = (await conn.execute(select(t).where(
                t.c.order_id == order_id, t.c.user_id == user_id))).first()
        if row is None:
            raise ApiError(404, f"no payment for order {order_id!r}")
        return PaymentView(order_id=order_id, status=row.status, amount=row.amount_cents / 100)


def _event_handlers(service: Service, ledger: Ledger) -> None:
    uow, intents = service.uow, ledger.intents
    add_intent = insert(intents).on_conflict_do_nothing()
    find_intent = select(intents).where(intents.c.order_id == bindparam("oid"))

    async def remember(tx: Tx, event: OrderCreated) -> None:
        await tx.conn.execute(add_intent, {
            "order_id": event.order_id, "user_id": event.user_id,
            "amount_cents": event.total_cents, "card_token": event.card_token,
        })

    async def charge(tx: Tx, order_id: str) -> None:
        intent = (await tx.conn.execute(find_intent, {"oid": order_id})).first()
        if intent is None:
            raise IntentMissingError(order_id)
        await ledger.charge(tx, order_id, intent.user_id, intent.amount_cents,
                            intent.card_token)

    @service.bus.subscriber(Topics.ORDERS, concurrency=CONCURRENCY)
    async def on_order(event: OrderEvent, message: Message) -> None:
        if isinstance(event, OrderCreated):
            await uow.handle(message, Topics.ORDERS, lambda tx: remember(tx, event))
        elif isinstance(event, OrderCancelled):
            await uow.handle(message, Topics.ORDERS, lambda tx: ledger.refund(tx, event.order_id))

    @service.bus.subscriber(Topics.INVENTORY, concurrency=CONCURRENCY)
    async def on_stock(event: InventoryEvent, message: Message) -> None:
        if isinstance(event, StockReserved):
            await uow.handle(message, Topics.INVENTORY, lambda tx: charge(tx, event.order_id))


def _command_handlers(service: Service, ledger: Ledger) -> None:
    uow = service.uow

    @service.bus.responder(PAYMENTS_COMMANDS, concurrency=CONCURRENCY)
    async def on_command(command: PaymentCommand) -> PaymentEvent | None:
        """The saga's requests; idempotent per order, so a re-sent one gets its reply."""
        if isinstance(command, ChargePayment):
            charge = command
            return await uow.run(lambda tx: ledger.charge(
                tx, charge.order_id, charge.user_id, charge.amount_cents, charge.card_token))
        return await uow.run(lambda tx: ledger.refund(tx, command.order_id))
