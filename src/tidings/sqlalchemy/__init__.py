"""The consistency toolkit on SQLAlchemy (async): outbox, inbox and saga store.

``pip install 'tidings[sqlalchemy]'`` brings SQLAlchemy with aiosqlite and asyncpg.
Every piece writes to the service's own database, in the service's own transactions::

    engine = create_async_engine("postgresql+asyncpg://...")
    outbox = Outbox(engine)
    outbox.relay(app)                       # publishes recorded events while app runs

    async with sessions() as session, session.begin():
        session.add(User(name="alice"))
        await session.flush()               # the id is allocated in this transaction
        await outbox.publish(session, "users", {"type": "USER_CREATED", ...}, key=...)

    inbox = Inbox(engine, consumer="billing")

    @app.subscriber("users")
    @inbox.idempotent
    async def on_user(event: UserCreated, session: AsyncSession) -> None: ...
"""

from __future__ import annotations

try:
    import sqlalchemy.ext.asyncio  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    from .._errors import MissingDependencyError

    raise MissingDependencyError("tidings.sqlalchemy", "sqlalchemy") from exc

from ._group import GroupCommit
from ._inbox import Inbox
from ._lease import Lease
from ._outbox import Outbox
from ._outbox_dead import DeadRow, OutboxDeadLetters
from ._relay import OutboxRelay
from ._sagas import SqlSagaStore
from ._schema import (
    create_tables,
    inbox_table,
    leases_table,
    metadata,
    outbox_dead_table,
    outbox_table,
    saga_events_table,
    sagas_table,
)
from ._sql import OutsideTransactionError
from ._sqlite import execute_dml, sqlite_engine

__all__ = [
    "DeadRow",
    "GroupCommit",
    "Inbox",
    "Lease",
    "Outbox",
    "OutboxDeadLetters",
    "OutboxRelay",
    "OutsideTransactionError",
    "SqlSagaStore",
    "create_tables",
    "execute_dml",
    "inbox_table",
    "leases_table",
    "metadata",
    "outbox_dead_table",
    "outbox_table",
    "saga_events_table",
    "sagas_table",
    "sqlite_engine",
]
