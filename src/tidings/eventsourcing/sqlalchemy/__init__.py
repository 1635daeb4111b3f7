"""The event store and the projection runner on SQLAlchemy (async): SQLite, PostgreSQL.

``pip install 'tidings[sqlalchemy]'``. The tables live in the service's database next
to the outbox's, so an aggregate's events, their bus messages and its snapshot commit
together, and a projection's read model commits together with its position::

    engine = create_async_engine("postgresql+asyncpg://...")
    await create_tables(engine)                   # or add ``metadata`` to your migrations
    store = EventStore(engine, events, outbox=Outbox(engine), snapshot_every=100)

    order = Order.place("o-1", Decimal("9.90"))
    await store.save(order)                       # ConcurrencyConflictError if stale
    order = await store.load(Order, "o-1")

    projections = Projections(store, totals).attach(app)   # follows while app runs
"""

from __future__ import annotations

try:
    import sqlalchemy.ext.asyncio  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    from ..._errors import MissingDependencyError

    raise MissingDependencyError("tidings.eventsourcing.sqlalchemy", "sqlalchemy") from exc

from ._runner import Progress, Projections, ProjectionStatus
from ._schema import create_tables, events_table, metadata, projections_table, snapshots_table
from ._store import EventHeaders, EventStore

__all__ = [
    "EventHeaders",
    "EventStore",
    "Progress",
    "ProjectionStatus",
    "Projections",
    "create_tables",
    "events_table",
    "metadata",
    "projections_table",
    "snapshots_table",
]
