"""The tables of the consistency toolkit, in the service's own database.

Add :data:`metadata` to your migrations (Alembic: ``target_metadata = [Base.metadata,
tidings.sqlalchemy.metadata]``) or call :func:`create_tables` at startup. Times are
seconds since the epoch (floats), so every dialect stores them the same way.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "create_tables",
    "inbox_table",
    "leases_table",
    "metadata",
    "outbox_dead_table",
    "outbox_table",
    "saga_events_table",
    "sagas_table",
]

metadata = sa.MetaData()

#: SQLite only auto-increments an INTEGER PRIMARY KEY.
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")



def _outbox_row() -> list[sa.Column[Any]]:
    """The columns of an outbox row after its ``seq`` (the dead table keeps them all)."""
    return [
        sa.Column("message_id", sa.String(200), nullable=False),
        sa.Column("topic", sa.String(200), nullable=False),
        sa.Column("key", sa.Text(), nullable=True),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("deliver_at", sa.Double(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
    ]


outbox_table = sa.Table(
    "tidings_outbox", metadata,
    sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
    *_outbox_row(),
)

#: Outbox rows the relay can never send (the bus refused them for good, such as a record
#: over its size limit), and the later rows of the same topic and key, which wait with
#: them so the key's order holds (``blocked_by``: the seq of the row they wait behind).
outbox_dead_table = sa.Table(
    "tidings_outbox_dead", metadata,
    sa.Column("seq", _SEQ, primary_key=True, autoincrement=False),
    *_outbox_row(),
    sa.Column("failed_at", sa.Double(), nullable=False),
    sa.Column("error", sa.Text(), nullable=False),
    sa.Column("blocked_by", _SEQ, nullable=True),
)

inbox_table = sa.Table(
    "tidings_inbox", metadata,
    sa.Column("consumer", sa.String(200), primary_key=True),
    sa.Column("message_id", sa.String(200), primary_key=True),
    sa.Column("processed_at", sa.Double(), nullable=False, index=True),
)

leases_table = sa.Table(
    "tidings_leases", metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("expires_at", sa.Double(), nullable=False),
)

sagas_table = sa.Table(
    "tidings_sagas", metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("status", sa.String(40), nullable=False),
    sa.Column("direction", sa.String(20), nullable=False),
    sa.Column("state", sa.Text(), nullable=False),
    sa.Column("step", sa.Integer(), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("owner", sa.String(200), nullable=True),
    sa.Column("lease_until", sa.Double(), nullable=True),
    sa.Column("created_at", sa.Double(), nullable=False),
    sa.Column("updated_at", sa.Double(), nullable=False),
    sa.Column("wake_at", sa.Double(), nullable=True),
    sa.Column("deadline", sa.Double(), nullable=True),
    sa.Column("branches", sa.Text(), nullable=True),
    sa.Index("tidings_sagas_status", "status", "lease_until"),
)

saga_events_table = sa.Table(
    "tidings_saga_events", metadata,
    sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
    sa.Column("saga_id", sa.String(200), nullable=False, index=True),
    sa.Column("step", sa.String(200), nullable=False),
    sa.Column("phase", sa.String(20), nullable=False),
    sa.Column("outcome", sa.String(40), nullable=False),
    sa.Column("attempt", sa.Integer(), nullable=False),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("at", sa.Double(), nullable=False),
)


async def create_tables(engine: AsyncEngine) -> None:
    """Create the toolkit's tables where they are missing (idempotent)."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
