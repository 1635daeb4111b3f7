"""The public API of the event sourcing toolkit is pinned, documented, and typed."""

from __future__ import annotations

from typing import Any

import tidings
import tidings.eventsourcing as es
import tidings.eventsourcing.sqlalchemy as es_sql
from tidings.eventsourcing import Projection, Recorded

from .domain import OrderPlaced


def test_exported_members() -> None:
    assert sorted(es.__all__) == sorted([
        "Aggregate", "AggregateNotFoundError", "ConcurrencyConflictError", "EventRegistry",
        "EventSourcingError", "EventType", "Projection", "ProjectionError",
        "ProjectionHandler", "Recorded", "ResetHandler", "UnknownEventTypeError",
        "UpcastError", "Upcaster"])
    assert sorted(es_sql.__all__) == sorted([
        "EventHeaders", "EventStore", "Progress", "ProjectionStatus", "Projections",
        "create_tables", "events_table", "metadata", "projections_table", "snapshots_table"])
    for module in (es, es_sql):
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, type):
                assert obj.__doc__, f"{name} has no docstring"
    errors = [getattr(es, n) for n in es.__all__ if n.endswith("Error")]
    assert all(issubclass(e, tidings.TidingsError) for e in errors)


def test_projection_decorators_return_the_function_unchanged() -> None:
    projection = Projection("p")

    async def handler(recorded: Recorded[OrderPlaced], session: Any) -> None: ...

    async def reset(session: Any) -> None: ...

    assert projection.on(OrderPlaced)(handler) is handler
    assert projection.on_reset(reset) is reset
