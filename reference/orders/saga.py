"""Orchestration (``--mode orchestration``): the order flow as a saga in the orders service.

The saga engine of :mod:`tidings.saga` drives inventory and payments with commands
(request/reply on ``inventory-commands`` and ``payments-commands``) and persists every
step in the orders database, so a killed orders process resumes its sagas. The saga
starts in the same transaction that inserts the order.

Steps, and what undoes them when a later step fails::

    open-order          (no action)         | cancel the order (with the reason)
    reserve-stock       ReserveStock        | ReleaseStock
    charge-payment      ChargePayment       | RefundPayment
    commit-and-confirm  (at once, joined; retried, never undone: past the point of no return)
      commit-stock      CommitStock
      confirm-order     order CONFIRMED

``open-order`` only holds the cancellation: reaching it costs no write. A rejection or a
decline fails its step for good at once (:class:`~tidings.saga.StepFailedError`, whatever
the retry policy), with the reason recorded in the saga's state, so the compensations
run and the cancellation knows why. A step that fails that way took no effect, so it is
not compensated itself: a rejected reservation reserved nothing.
The card is charged only once the stock is reserved (an order that cannot be delivered
never touches the card), so reserving and charging cannot run at once; committing the
stock and confirming the order can (a :class:`~tidings.saga.Parallel` step).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from tidings import RetryPolicy
from tidings.saga import Command, Parallel, Saga, SagaEngine, Step, StepFailedError
from tidings.sqlalchemy import SqlSagaStore

from ..common.events import (
    INVENTORY_COMMANDS,
    PAYMENTS_COMMANDS,
    ChargePayment,
    CommitStock,
    Line,
    OrderCreated,
    RefundPayment,
    ReleaseStock,
    ReserveStock,
)
from ..common.messaging import Tx
from ..common.service import Service
from .api import Starter
from .store import CANCELLED, CONFIRMED, OrderStore

__all__ = ["OrderState", "orchestrate"]

#: Participants may be restarting (a crash, a deploy): keep asking for a while.
REQUEST_RETRY = RetryPolicy(max_attempts=12, backoff=0.5, max_backoff=5.0)


class OrderState(BaseModel):
    """What the saga knows about its order."""

    order_id: str
    user_id: int
    items: list[Line]
    total_cents: int
    #: The payments vault's token: a saga's state is kept, and shown by ``sagas show``.
    card_token: str
    failure: str | None = None


def _fail_on_refusal(state: OrderState, reply: Any) -> OrderState:
    """A rejection or a decline fails the step for good, with its reason kept."""
    if isinstance(reply, dict) and reply.get("type") in ("STOCK_REJECTED", "PAYMENT_DECLINED"):
        state.failure = str(reply.get("reason", "failed"))
        raise StepFailedError(state.failure, state=state)
    return state


def _command(topic: str, build: Any, on_reply: Any = None) -> Command[OrderState]:
    return Command(topic, build, on_reply=on_reply)


def order_saga(service: Service, store: OrderStore) -> Saga[OrderState]:
    """The saga definition, with the local steps bound to this service's database."""

    async def finish(state: OrderState, status: str, reason: str | None) -> OrderState:
        await service.uow.run(lambda tx: store.finish(tx, state.order_id, status, reason))
        return state

    async def cancel(state: OrderState) -> OrderState:
        return await finish(state, CANCELLED, state.failure or "could not be completed")

    async def confirm(state: OrderState) -> OrderState:
        return await finish(state, CONFIRMED, None)

    def oid(state: OrderState) -> str:
        return state.order_id

    return Saga("place-order", OrderState, [
        Step("open-order", compensation=cancel, compensation_retry=REQUEST_RETRY),
        Step("reserve-stock", _command(INVENTORY_COMMANDS, lambda s: ReserveStock(
                 order_id=oid(s), items=tuple(s.items)), _fail_on_refusal),
             compensation=_command(INVENTORY_COMMANDS, lambda s: ReleaseStock(order_id=oid(s))),
             timeout=10, retry=REQUEST_RETRY, compensation_retry=REQUEST_RETRY),
        Step("charge-payment", _command(PAYMENTS_COMMANDS, lambda s: ChargePayment(
                 order_id=oid(s), user_id=s.user_id, amount_cents=s.total_cents,
                 card_token=s.card_token),
                 _fail_on_refusal),
             compensation=_command(PAYMENTS_COMMANDS, lambda s: RefundPayment(order_id=oid(s))),
             timeout=10, retry=REQUEST_RETRY, compensation_retry=REQUEST_RETRY),
        Parallel("commit-and-confirm", (
            Step("commit-stock", _command(INVENTORY_COMMANDS, lambda s: CommitStock(
                order_id=oid(s))), timeout=10, retry=REQUEST_RETRY, retriable=True),
            Step("confirm-order", confirm, retry=REQUEST_RETRY, retriable=True),
        )),
    ])


def orchestrate(service: Service, store: OrderStore) -> Starter:
    """Set up the saga engine on the orders service; return what starts an order's saga."""
    saga = order_saga(service, store)
    saga_store = SqlSagaStore(service.db.engine)
    engine = SagaEngine(service.bus, saga_store, [saga], lease=10.0)
    service.metrics.watch_sagas(saga_store)  # tidings_sagas{status=...} on /metrics

    async def start(tx: Tx, created: OrderCreated) -> None:
        state = OrderState(
            order_id=created.order_id, user_id=created.user_id, items=list(created.items),
            total_cents=created.total_cents, card_token=created.card_token,
        )
        await engine.start(saga, state, saga_id=created.order_id, within=tx.conn)

    return start
