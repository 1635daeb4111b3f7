"""The tables of the event store, in the service's own database.

Add :data:`metadata` to your migrations next to ``tidings.sqlalchemy.metadata`` (the
outbox lives there), or call :func:`create_tables` at startup, which creates both.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["create_tables", "events_table", "metadata", "projections_table", "snapshots_table"]

metadata = sa.MetaData()

#: SQLite only auto-increments an INTEGER PRIMARY KEY.
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

events_table = sa.Table(
    "tidings_events", metadata,
    # The global order projections follow; writers take it in commit order (see _store).
    sa.Column("position", _SEQ, primary_key=True, autoincrement=True),
    sa.Column("stream_id", sa.String(200), nullable=False),
    sa.Column("stream_type", sa.String(200), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("event_type", sa.String(200), nullable=False),
    sa.Column("schema_version", sa.Integer(), nullable=False),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),
    sa.Column("data", sa.Text(), nullable=False),
    sa.Column("meta", sa.Text(), nullable=False),
    sa.Column("recorded_at", sa.Double(), nullable=False),
    # A stale writer collides here: that is the optimistic concurrency check.
    sa.UniqueConstraint("stream_id", "version", name="tidings_events_stream_version"),
)

snapshots_table = sa.Table(
    "tidings_snapshots", metadata,
    sa.Column("stream_id", sa.String(200), primary_key=True),
    sa.Column("stream_type", sa.String(200), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("state", sa.Text(), nullable=False),
    sa.Column("taken_at", sa.Double(), nullable=False),
)

projections_table = sa.Table(
    "tidings_projections", metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("position", sa.BigInteger(), nullable=False),
    sa.Column("updated_at", sa.Double(), nullable=False),
    sa.Column("error", sa.Text(), nullable=True),
)


async def create_tables(engine: AsyncEngine) -> None:
    """Create the event store's tables and the consistency toolkit's (the outbox) where
    they are missing (idempotent)."""
    from ...sqlalchemy import create_tables as create_toolkit_tables

    await create_toolkit_tables(engine)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
