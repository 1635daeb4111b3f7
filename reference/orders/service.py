"""orders: takes orders over HTTP and follows each one to CONFIRMED or CANCELLED.

Choreography (default): a new order is announced as ``ORDER_CREATED``; the outcome
arrives as events: ``STOCK_REJECTED`` on ``inventory`` cancels it (out of stock),
``PAYMENT_SUCCEEDED`` on ``payments`` confirms it, ``PAYMENT_DECLINED`` cancels it.
Orchestration: a saga in this service drives inventory and payments with commands
(:mod:`reference.orders.saga`). In both modes the order's fate is announced on ``orders``,
its events are kept as its history (:mod:`reference.orders.history`), and the fraud rules
(:mod:`reference.orders.fraud`) may cancel a new order before its flow starts.
"""

from __future__ import annotations

from sqlalchemy import MetaData

from tidings import Message
from tidings.eventsourcing.sqlalchemy import create_tables

from ..common.events import (
    InventoryEvent,
    OrderCreated,
    PaymentDeclined,
    PaymentEvent,
    PaymentSucceeded,
    ProductListed,
    StockRejected,
    Topics,
    UserRegistered,
)
from ..common.messaging import Tx
from ..common.service import Service
from ..common.settings import Mode, Settings
from .api import add_routes
from .fraud import RULES, FraudCheck
from .history import History
from .store import CANCELLED, CONFIRMED, OrderStore

__all__ = ["build"]

CONCURRENCY = 32


def build(settings: Settings) -> Service:
    """The orders service."""
    metadata = MetaData()
    service = Service("orders", settings, metadata)
    service.db.on_create(create_tables)
    store = OrderStore(metadata, History(service.db.engine))
    fraud = FraudCheck(settings.fraud_rules or RULES)

    async def load_replicas() -> None:
        async with service.db.read() as conn:
            await store.load(conn)

    service.on_startup(load_replicas)
    _replica_handlers(service, store)
    if settings.mode is Mode.ORCHESTRATION:
        from .saga import orchestrate

        add_routes(service, store, fraud, orchestrate(service, store))
    else:
        _outcome_handlers(service, store)
        add_routes(service, store, fraud, _announce)
    return service


async def _announce(tx: Tx, created: OrderCreated) -> None:
    """Choreography: announce the order; the others take it from there."""
    await tx.emit(Topics.ORDERS, created, key=created.order_id)


def _replica_handlers(service: Service, store: OrderStore) -> None:
    uow = service.uow

    @service.bus.subscriber(Topics.USERS, concurrency=CONCURRENCY)
    async def on_user(event: UserRegistered, message: Message) -> None:
        await uow.handle(message, Topics.USERS, lambda tx: store.know_user(
            tx, event.userId, message.timestamp))

    @service.bus.subscriber(Topics.PRODUCTS)
    async def on_product(event: ProductListed, message: Message) -> None:
        await uow.handle(message, Topics.PRODUCTS, lambda tx: store.list_product(
            tx, event.sku, event.name, event.price_cents))


def _outcome_handlers(service: Service, store: OrderStore) -> None:
    uow = service.uow

    @service.bus.subscriber(Topics.INVENTORY, concurrency=CONCURRENCY)
    async def on_stock(event: InventoryEvent, message: Message) -> None:
        if isinstance(event, StockRejected):
            await uow.handle(message, Topics.INVENTORY, lambda tx: store.finish(
                tx, event.order_id, CANCELLED, event.reason))

    @service.bus.subscriber(Topics.PAYMENTS, concurrency=CONCURRENCY)
    async def on_payment(event: PaymentEvent, message: Message) -> None:
        if isinstance(event, PaymentSucceeded):
            await uow.handle(message, Topics.PAYMENTS, lambda tx: store.finish(
                tx, event.order_id, CONFIRMED))
        elif isinstance(event, PaymentDeclined):
            await uow.handle(message, Topics.PAYMENTS, lambda tx: store.finish(
                tx, event.order_id, CANCELLED, event.reason))
