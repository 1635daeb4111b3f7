"""inventory: ``GET /products``, ``GET /stock/{sku}``, ``PUT /stock/{sku}`` (admin token);
reacts to orders.

Choreography: an ``ORDER_CREATED`` on ``orders`` reserves stock; ``PAYMENT_SUCCEEDED`` on
``payments`` turns the reservation into a sale, ``PAYMENT_DECLINED`` releases it.
Orchestration: the order saga sends the same requests as commands on
``inventory-commands``. Either way the outcome is an event on ``inventory``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import MetaData, func, select, update

from tidings import Message

from ..common.auth import ADMIN
from ..common.events import (
    INVENTORY_COMMANDS,
    CommitStock,
    InventoryCommand,
    OrderCreated,
    OrderEvent,
    PaymentDeclined,
    PaymentEvent,
    PaymentSucceeded,
    ProductListed,
    ReleaseStock,
    ReserveStock,
    Topics,
)
from ..common.messaging import Tx
from ..common.service import Service
from ..common.settings import Mode, Settings
from ..common.web import ApiError, error_responses
from .catalog import CATALOG
from .stock import Stock, StockEvent

__all__ = ["ProductView", "Restock", "StockLevel", "build"]

CONCURRENCY = 32


class ProductView(BaseModel):
    """A catalog entry with its live stock."""

    sku: str
    name: str
    price: float
    available: int


class StockLevel(BaseModel):
    """``GET /stock/{sku}``: what can be sold, what orders hold, what was sold."""

    sku: str
    available: int
    reserved: int
    sold: int


class Restock(BaseModel):
    """``PUT /stock/{sku}`` body."""

    model_config = ConfigDict(strict=True, extra="forbid")

    available: int = Field(ge=0, le=1_000_000_000)


def build(settings: Settings) -> Service:
    """The inventory service."""
    metadata = MetaData()
    stock = Stock(metadata)
    service = Service("inventory", settings, metadata)
    _routes(service, stock)
    if settings.mode is Mode.ORCHESTRATION:
        _command_handlers(service, stock)
    else:
        _event_handlers(service, stock)
    service.on_startup(lambda: _seed(service, stock))
    return service


async def _seed(service: Service, stock: Stock) -> None:
    """List the catalog in an empty inventory (once: the listing events go via the outbox)."""
    async with service.uow.transaction() as tx:
        count = (await tx.conn.execute(select(func.count()).select_from(stock.products)))
        if count.scalar_one():
            return
        for p in CATALOG:
            await tx.conn.execute(stock.products.insert().values(
                sku=p.sku, name=p.name, price_cents=p.price_cents, available=p.stock,
                reserved=0, sold=0,
            ))
            listed = ProductListed(sku=p.sku, name=p.name, price_cents=p.price_cents)
            await tx.emit(Topics.PRODUCTS, listed, key=p.sku)


def _routes(service: Service, stock: Stock) -> None:
    api, db, p = service.api, service.db, stock.products

    @api.get("/products", response_model=list[ProductView], tags=["inventory"])
    async def products() -> list[ProductView]:
        """The catalog with live availability."""
        async with db.read() as conn:
            rows = (await conn.execute(select(p).order_by(p.c.sku))).all()
        return [ProductView(sku=r.sku, name=r.name, price=r.price_cents / 100,
                            available=r.available) for r in rows]

    @api.get("/stock/{sku}", response_model=StockLevel, responses=error_responses(404),
             tags=["inventory"])
    async def get_stock(sku: str) -> StockLevel:
        """One product's stock."""
        async with db.read() as conn:
            row = (await conn.execute(select(p).where(p.c.sku == sku))).first()
        if row is None:
            raise ApiError(404, f"unknown sku {sku!r}")
        return StockLevel(sku=sku, available=row.available, reserved=row.reserved,
                          sold=row.sold)

    @api.put("/stock/{sku}", response_model=StockLevel,
             responses=error_responses(401, 404, 422), tags=["inventory"],
             dependencies=[ADMIN])
    async def restock(sku: str, body: Restock) -> StockLevel:
        """Set how many units can be sold (restocking; reserved and sold stay); admin
        token."""
        async with db.write() as conn:
            result = await conn.execute(
                update(p).where(p.c.sku == sku).values(available=body.available)
                .returning(p.c.reserved, p.c.sold)
            )
            row = result.first()
        if row is None:
            raise ApiError(404, f"unknown sku {sku!r}")
        return StockLevel(sku=sku, available=body.available, reserved=row.reserved,
                          sold=row.sold)


def _event_handlers(service: Service, stock: Stock) -> None:
    uow = service.uow

    @service.bus.subscriber(Topics.ORDERS, concurrency=CONCURRENCY)
    async def on_order(event: OrderEvent, message: Message) -> None:
        if isinstance(event, OrderCreated):
            await uow.handle(message, Topics.ORDERS, lambda tx: stock.reserve(
                tx, event.order_id, event.items))

    @service.bus.subscriber(Topics.PAYMENTS, concurrency=CONCURRENCY)
    async def on_payment(event: PaymentEvent, message: Message) -> None:
        if isinstance(event, PaymentSucceeded):
            await uow.handle(message, Topics.PAYMENTS,
                             lambda tx: stock.commit(tx, event.order_id))
        elif isinstance(event, PaymentDeclined):
            await uow.handle(message, Topics.PAYMENTS,
                             lambda tx: stock.release(tx, event.order_id))


def _command_handlers(service: Service, stock: Stock) -> None:
    uow = service.uow

    @service.bus.responder(INVENTORY_COMMANDS, concurrency=CONCURRENCY)
    async def on_command(command: InventoryCommand) -> StockEvent:
        """The saga's requests. Each is idempotent per order (a re-sent request gets the
        recorded outcome again), so no inbox: a duplicate still needs its reply."""
        return await uow.run(lambda tx: _obey(tx, stock, command))


async def _obey(tx: Tx, stock: Stock, command: ReserveStock | CommitStock | ReleaseStock
                ) -> StockEvent:
    if isinstance(command, ReserveStock):
        return await stock.reserve(tx, command.order_id, command.items)
    if isinstance(command, CommitStock):
        return await stock.commit(tx, command.order_id)
    return await stock.release(tx, command.order_id)
