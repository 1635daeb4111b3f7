"""Event sourcing for tidings: aggregates rebuilt from their events, upcasters for old
event shapes, and projections that build read models exactly once.

This package is storage-agnostic (standard library, pydantic, tidings core). The event
store, snapshots and the projection runner on SQLAlchemy are in
:mod:`tidings.eventsourcing.sqlalchemy`; new events reach the bus through the outbox
of :mod:`tidings.sqlalchemy`, in the transaction that stores them.
"""

from __future__ import annotations

from ._aggregate import Aggregate
from ._errors import (
    AggregateNotFoundError,
    ConcurrencyConflictError,
    EventSourcingError,
    ProjectionError,
    UnknownEventTypeError,
    UpcastError,
)
from ._events import EventRegistry, EventType, Recorded, Upcaster
from ._projection import Projection, ProjectionHandler, ResetHandler

__all__ = [
    "Aggregate",
    "AggregateNotFoundError",
    "ConcurrencyConflictError",
    "EventRegistry",
    "EventSourcingError",
    "EventType",
    "Projection",
    "ProjectionError",
    "ProjectionHandler",
    "Recorded",
    "ResetHandler",
    "UnknownEventTypeError",
    "UpcastError",
    "Upcaster",
]
