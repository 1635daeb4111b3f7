"""Orchestrated sagas: ordered steps with compensations, persisted, resumable.

Define a saga once, with a pydantic model for its state::

    class Order(BaseModel):
        order_id: str
        amount: int
        payment_id: str | None = None

    async def charge(order: Order) -> Order:
        order.payment_id = await payments.charge(order.order_id, order.amount)
        return order

    place_order = Saga("place-order", Order, [
        Step("reserve", Command("inventory.reserve", lambda o: {"order": o.order_id}),
             compensation=Command("inventory.release", lambda o: {"order": o.order_id})),
        Step("charge", charge, compensation=refund, timeout=5,
             retry=RetryPolicy(max_attempts=3, give_up_on=(CardDeclined,))),
        Step("confirm", confirm, retriable=True),
    ])

    engine = SagaEngine(app, SqlSagaStore(db), [place_order])
    saga_id = await engine.start(place_order, Order(order_id="o-1", amount=30))

The engine is storage-agnostic; :mod:`tidings.sqlalchemy` provides the SQL store.
"""

from __future__ import annotations

from ._definition import Action, Command, Parallel, Saga, Sleep, Step
from ._engine import SagaEngine
from ._errors import (
    SagaConflictError,
    SagaDefinitionError,
    SagaError,
    SagaNotFoundError,
    StepFailedError,
)
from ._run import SAGA_ID_HEADER, SAGA_STEP_HEADER
from ._store import (
    ACTIVE,
    PARKED_STATES,
    Direction,
    MemorySagaStore,
    SagaRecord,
    SagaStatus,
    SagaStore,
    StepEvent,
)

__all__ = [
    "ACTIVE",
    "PARKED_STATES",
    "SAGA_ID_HEADER",
    "SAGA_STEP_HEADER",
    "Action",
    "Command",
    "Direction",
    "MemorySagaStore",
    "Parallel",
    "Saga",
    "SagaConflictError",
    "SagaDefinitionError",
    "SagaEngine",
    "SagaError",
    "SagaNotFoundError",
    "SagaRecord",
    "SagaStatus",
    "SagaStore",
    "Sleep",
    "Step",
    "StepEvent",
    "StepFailedError",
]
