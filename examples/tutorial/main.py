"""Run both services on one bus, register three users, then deliver one event twice:
three accounts, not four. ``python examples/tutorial/main.py``"""

import asyncio
import os
import tempfile

from accounts import AccountsService
from accounts import Base as AccountsBase
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from users import Base as UsersBase
from users import UsersService

from tidings import App, TopicPartition
from tidings.ports import OutRecord
from tidings.sqlalchemy import create_tables


async def database(path: str, base: type) -> AsyncEngine:
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    await create_tables(engine)  # the outbox's and inbox's tables
    async with engine.begin() as conn:
        await conn.run_sync(base.metadata.create_all)
    return engine


async def published(app: App, topic: str, count: int) -> None:
    """Wait until ``topic`` holds ``count`` messages (the relay publishes the events the
    outbox recorded a moment after their transaction)."""
    while True:
        ends = [sum(t.end_offsets.values()) for t in await app.transport.describe_topics()
                if t.name == topic]
        if ends and ends[0] >= count:
            return
        await asyncio.sleep(0.05)


async def caught_up(app: App, topic: str) -> None:
    """Wait until ``app``'s group has handled everything on ``topic`` (lag 0)."""
    while True:
        [info] = [t for t in await app.transport.describe_topics() if t.name == topic]
        groups = {g.name: g for g in await app.transport.describe_groups()}
        done = groups[app.name].committed if app.name in groups else {}
        if all(done.get(TopicPartition(topic, p), 0) >= end
               for p, end in info.end_offsets.items()):
            return
        await asyncio.sleep(0.05)


async def main(folder: str) -> None:
    broker = os.environ.get("TIDINGS_BROKER") or f"sqlite:///{folder}/bus.db"
    users_db = await database(f"{folder}/users.db", UsersBase)  # each service has its own
    accounts_db = await database(f"{folder}/accounts.db", AccountsBase)
    users = UsersService(users_db, broker)
    accounts = AccountsService(accounts_db, broker)
    async with users.app, accounts.app:
        for name in ("Alice", "Bob", "Carol"):
            print("registered user", await users.register(name))
        await published(users.app, "users", 3)
        await caught_up(accounts.app, "users")
        print("accounts:", await accounts.count())

        # A redelivery (a crash before the offset commit, a relay publishing twice) is
        # the same message id again: the inbox skips it.
        bus = users.app.transport
        topic = next(t for t in await bus.describe_topics() if t.name == "users")
        partition = next(p for p, end in topic.end_offsets.items() if end > 0)
        [first] = await bus.read("users", partition, 0, 1)
        # (Not with publish: it refuses a caller's tidings-* headers, the id among them.
        # The copy goes straight to the log, as a broker redelivering it would.)
        await bus.append([OutRecord("users", first.value, first.key, dict(first.headers))])
        await caught_up(accounts.app, "users")
        print("accounts after a duplicate delivery:", await accounts.count())
    await users_db.dispose()
    await accounts_db.dispose()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(main(folder))
