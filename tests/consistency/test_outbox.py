"""The transactional outbox: events commit with the service's rows or not at all, and the
relay publishes them at least once, in order per key, across crashes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from conformance.util import eventually
from tidings import App, Headers, Message
from tidings.sqlalchemy import Outbox, OutsideTransactionError

from .conftest import Stack, database
from .services import count_effects, counting_consumer, create_test_tables, register_user, users


async def _collect(app: App, topic: str, seen: list[Message]) -> None:
    @app.subscriber(topic, group=f"{app.name}-tail")
    async def tail(payload: dict[str, Any], message: Message) -> None:
        seen.append(message)


def test_outbox_outside_a_transaction_fails_before_writing(db_url: str) -> None:
    async def main() -> None:
        async with database(db_url) as engine:
            outbox = Outbox(engine)
            async with AsyncSession(engine) as session:
                with pytest.raises(OutsideTransactionError, match="inside a transaction"):
                    await outbox.publish(session, "users", {"a": 1})
            async with engine.connect() as conn:
                with pytest.raises(OutsideTransactionError):
                    await outbox.publish(conn, "users", {"a": 1})
            with pytest.raises(OutsideTransactionError, match="AsyncSession"):
                await outbox.publish("not a session", "users", {"a": 1})  # type: ignore[arg-type]
            async with AsyncSession(engine) as session, session.begin():
                with pytest.raises(Exception, match="invalid topic"):
                    await outbox.publish(session, "bad topic!", {"a": 1})
                with pytest.raises(Exception, match="cannot encode"):
                    await outbox.publish(session, "users", object())
            assert await outbox.pending() == 0

    asyncio.run(main())


def test_commit_publishes_once_in_order_rollback_publishes_nothing(stack: Stack) -> None:
    async def main() -> None:
        async with database(stack.db) as engine:
            await create_test_tables(engine)
            outbox = Outbox(engine)
            app = App("users-svc", broker=stack.bus)
            outbox.relay(app, interval=0.02)
            seen: list[Message] = []
            await _collect(app, "users", seen)
            async with app:
                ids = [await register_user(engine, outbox, f"u{n}") for n in range(20)]
                with pytest.raises(RuntimeError):
                    await register_user(engine, outbox, "ghost", fail=True)
                async with AsyncSession(engine) as session, session.begin():
                    for n in range(30):  # one key, one transaction: order must hold
                        await outbox.publish(session, "users", {"n": n}, key="ordered")
                await eventually(lambda: len(seen) >= 50, 20, "50 events")
                await asyncio.sleep(0.3)
            async with engine.connect() as conn:
                names = (await conn.execute(sa.select(users.c.name))).scalars().all()
            assert "ghost" not in names and len(names) == 20
            registered = [m for m in seen if m.key != "ordered"]
            assert sorted(m.key for m in registered) == sorted(f"user-{i}" for i in ids)
            ordered = [int(m.body.decode().split(":")[1].rstrip("}")) for m in seen
                       if m.key == "ordered"]
            assert ordered == list(range(30))
            assert len({m.id for m in seen}) == len(seen) == 50
            assert await outbox.pending() == 0

    asyncio.run(main())


def test_inbox_and_outbox_share_one_transaction_in_a_choreography(stack: Stack) -> None:
    """A handler that fails after recording its next event publishes nothing; its retry
    publishes the event once."""
    async def main() -> None:
        async with database(stack.db) as engine:
            await create_test_tables(engine)
            outbox = Outbox(engine)
            app = App("billing", broker=stack.bus)
            outbox.relay(app, interval=0.02)
            from tidings.sqlalchemy import Inbox

            inbox = Inbox(engine, "billing")
            attempts: list[int] = []

            @app.subscriber("orders")
            @inbox.idempotent
            async def on_order(order: dict[str, Any], session: AsyncSession,
                               message: Message) -> None:
                attempts.append(message.attempt)
                await outbox.publish(session, "invoices", {"order": order["id"]},
                                     key=str(order["id"]))
                if message.attempt == 1:
                    raise ConnectionError("the first attempt fails after recording")

            seen: list[Message] = []
            await _collect(app, "invoices", seen)
            async with app:
                await app.publish("orders", {"id": 7}, key="7")
                await eventually(lambda: len(seen) == 1, 15, "the invoice")
                await asyncio.sleep(0.3)
            assert attempts[:2] == [1, 2]
            assert len(seen) == 1 and seen[0].body == b'{"order":7}'
            assert seen[0].causation_id is not None  # recorded inside the handler

    asyncio.run(main())


def test_crash_after_commit_before_publish_resumes(shared_stack: Stack, spawn: Any) -> None:
    """SIGKILL right after the database commit: the events are in the outbox, none on the
    bus; a relay started later publishes each exactly once, in order."""
    async def main() -> None:
        async with database(shared_stack.db) as engine:
            await create_test_tables(engine)
            child = spawn("commit-then-die", shared_stack.db, shared_stack.bus, "6")
            await child.wait_for("committing")
            assert await child.exit_code() == -9
            outbox = Outbox(engine)
            assert await outbox.pending() == 6
            app = App("users-svc", broker=shared_stack.bus)
            outbox.relay(app, interval=0.02)
            seen: list[Message] = []
            await _collect(app, "users", seen)
            async with app:
                await eventually(lambda: len(seen) == 6, 20, "6 events")
                await asyncio.sleep(0.3)
            assert len(seen) == 6 and await outbox.pending() == 0
            assert seen[-1].key == "k" or any(m.key == "k" for m in seen)

    asyncio.run(main())


def test_crash_after_publish_before_delete_republishes_with_the_same_ids(
        shared_stack: Stack, spawn: Any) -> None:
    """SIGKILL after the relay published, before it deleted the rows: a new relay
    publishes them again with the same message ids, and an inbox consumer has one
    effect per event."""
    async def main() -> None:
        async with database(shared_stack.db) as engine:
            await create_test_tables(engine)
            outbox = Outbox(engine)
            async with AsyncSession(engine) as session, session.begin():
                for n in range(10):
                    await outbox.publish(session, "numbers", {"n": n}, key=f"k{n % 3}")
            child = spawn("relay-dies-after-publish", shared_stack.db, shared_stack.bus, "4")
            assert await child.exit_code() == -9
            assert await outbox.pending() == 10  # nothing deleted
            app = App("reader", broker=shared_stack.bus)
            outbox.relay(app, interval=0.02)
            seen: list[Message] = []
            await _collect(app, "numbers", seen)
            counting_consumer(app, engine, "numbers", "reader")
            async with app:
                await eventually(lambda: len({m.id for m in seen}) == 10, 20, "10 ids")
                await asyncio.sleep(0.5)
            assert len(seen) >= 14  # 4 published twice
            assert await count_effects(engine) == dict.fromkeys(range(10), 1)
            for key in ("k0", "k1", "k2"):
                firsts: list[str] = []
                for m in seen:
                    if m.key == key and m.headers[Headers.ID] not in firsts:
                        firsts.append(m.headers[Headers.ID])
                assert len(firsts) == len([n for n in range(10) if f"k{n % 3}" == key])

    asyncio.run(main())


def test_two_relays_share_one_outbox_without_duplicates(stack: Stack) -> None:
    async def main() -> None:
        async with database(stack.db) as engine:
            outbox = Outbox(engine)
            first, second = App("svc", broker=stack.bus), App("svc", broker=stack.bus)
            outbox.relay(first, interval=0.01)
            Outbox(engine).relay(second, interval=0.01)
            seen: list[Message] = []
            reader = App("reader", broker=stack.bus)
            await _collect(reader, "events", seen)
            async with reader, first, second:
                for n in range(20):
                    async with AsyncSession(engine) as session, session.begin():
                        await outbox.publish(session, "events", {"n": n}, key="one")
                await eventually(lambda: len(seen) >= 20, 20, "20 events")
                await asyncio.sleep(0.3)
            assert [m.body for m in seen] == [f'{{"n":{n}}}'.encode() for n in range(20)]

    asyncio.run(main())
