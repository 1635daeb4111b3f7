"""The idempotent inbox: a redelivered message has no second effect, also across a
SIGKILL between the handler's commit and the offset commit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from conformance.util import eventually
from tidings import App, ConfigurationError, Message, testing
from tidings.sqlalchemy import Inbox

from .conftest import Stack, database
from .services import count_effects, counting_consumer, create_test_tables, effects


def test_forced_redelivery_has_no_second_effect(stack: Stack) -> None:
    """A handler that fails after its transaction committed is retried (the message is
    delivered again); the inbox drops the repeat."""
    async def main() -> None:
        async with database(stack.db) as engine:
            await create_test_tables(engine)
            app = App("billing", broker=stack.bus)
            handled: list[int] = []

            async def fail_once(payload: dict[str, Any]) -> None:
                handled.append(payload["n"])
                if handled.count(payload["n"]) == 1:
                    raise ConnectionError("dies after the commit, so it is redelivered")

            counting_consumer(app, engine, "orders", "billing", fail_once)
            async with app:
                for n in range(10):
                    await app.publish("orders", {"n": n}, key=f"k{n % 2}")
                await eventually(lambda: len(handled) == 20, 15, "20 deliveries")
            assert sorted(handled) == sorted(list(range(10)) * 2)
            assert await count_effects(engine, "billing") == dict.fromkeys(range(10), 1)

    asyncio.run(main())


def test_redelivery_after_a_member_crash_has_no_second_effect(db_url: str) -> None:
    """A member that dies before committing offsets: the next member gets the messages
    again; the inbox drops them."""
    async def main() -> None:
        async with database(db_url) as engine:
            await create_test_tables(engine)
            bus = testing.memory_url(session_timeout=0.5)
            first = App("billing", broker=bus)
            handled: list[int] = []

            async def note(payload: dict[str, Any]) -> None:
                handled.append(payload["n"])

            counting_consumer(first, engine, "orders", "billing", note)
            await first.start()
            for n in range(10):
                await first.publish("orders", {"n": n}, key=f"k{n % 2}")
            await eventually(lambda: len(handled) == 10, 15, "10 handled")
            testing.crash(first)  # the offsets of the last handled messages are lost
            second = App("billing", broker=bus)
            counting_consumer(second, engine, "orders", "billing", note)
            async with second:
                await second.publish("orders", {"n": 10}, key="k0")
                await eventually(lambda: 10 in handled, 15)
            assert len(handled) > 11, "nothing was redelivered: the test proves nothing"
            assert await count_effects(engine, "billing") == dict.fromkeys(range(11), 1)
            await first.transport.close()

    asyncio.run(main())


def test_the_same_message_id_twice_has_one_effect(db_url: str) -> None:
    """Two deliveries of one message, even at the same time, commit one effect."""
    async def main() -> None:
        async with database(db_url) as engine:
            await create_test_tables(engine)
            inbox = Inbox(engine, "billing")
            calls: list[str] = []

            async def work(session: AsyncSession) -> str:
                calls.append("called")
                await session.execute(effects.insert().values(source="billing", n=1))
                await asyncio.sleep(0.05)
                return "done"

            results = await asyncio.gather(*(inbox.process("m-1", work) for _ in range(4)))
            assert results.count("done") == 1 and results.count(None) == 3
            assert await inbox.process("m-1", work) is None
            assert await inbox.seen("m-1") and not await inbox.seen("m-2")
            assert await count_effects(engine) == {1: 1}

            async def fails(session: AsyncSession) -> None:
                await session.execute(effects.insert().values(source="billing", n=2))
                raise ValueError("the handler fails")

            with pytest.raises(ValueError, match="fails"):
                await inbox.process("m-2", fails)
            assert not await inbox.seen("m-2")  # rolled back with the handler's writes
            assert await count_effects(engine) == {1: 1}
            assert await inbox.prune(older_than=0) == 1

    asyncio.run(main())


def test_idempotent_rejects_handlers_it_cannot_call(db_url: str) -> None:
    async def main() -> None:
        async with database(db_url) as engine:
            inbox = Inbox(engine, "svc")

            def sync(payload: dict[str, Any], session: AsyncSession) -> None: ...

            async def too_many(a: int, b: AsyncSession, c: int) -> None: ...

            async def too_few(a: int) -> None: ...

            for bad in (sync, too_many, too_few):
                with pytest.raises(ConfigurationError, match=r"idempotent|async"):
                    inbox.idempotent(bad)  # type: ignore[call-overload]
            with pytest.raises(ConfigurationError):
                Inbox(engine, "")

            @inbox.idempotent
            async def fine(payload: int, session: AsyncSession, message: Message) -> int:
                return payload

            app = App("svc", broker=testing.memory_url())
            app.subscriber("numbers")(fine)  # tidings accepts the wrapped signature

    asyncio.run(main())


def test_sigkill_after_handler_commit_before_offset_commit(shared_stack: Stack,
                                                           spawn: Any) -> None:
    """The consumer process dies right after its handler's transaction committed and
    before the offset commit: the message comes again, and the inbox drops it."""
    async def main() -> None:
        async with database(shared_stack.db) as engine:
            await create_test_tables(engine)
            topic = "payments"
            child = spawn("consumer", shared_stack.db, shared_stack.bus, topic, "3")
            await child.wait_for("ready")
            producer = App("shop", broker=shared_stack.bus)
            async with producer:
                for n in range(8):
                    await producer.publish(topic, {"n": n}, key="one-key")
                await child.wait_for("handled")
                assert await child.exit_code() == -9
                assert (await count_effects(engine)).get(3) == 1
                survivor = spawn("consumer", shared_stack.db, shared_stack.bus, topic, "-1")
                await survivor.wait_for("ready")

                async def all_done() -> bool:
                    return len(await count_effects(engine)) == 8

                for _ in range(300):
                    if await all_done():
                        break
                    await asyncio.sleep(0.05)
            assert await count_effects(engine) == dict.fromkeys(range(8), 1)

    asyncio.run(main())


def test_claim_in_the_callers_transaction(db_url: str) -> None:
    """``claim`` records the message in a transaction the caller holds: once per
    consumer, and forgotten when that transaction rolls back."""
    async def main() -> None:
        async with database(db_url) as engine:
            await create_test_tables(engine)
            inbox, other = Inbox(engine, "billing"), Inbox(engine, "shipping")
            async with engine.begin() as conn:
                assert await inbox.claim(conn, "m-1")
                assert not await inbox.claim(conn, "m-1")
                assert await other.claim(conn, "m-1")
            async with engine.begin() as conn:
                assert not await inbox.claim(conn, "m-1")
            async with engine.connect() as conn:
                await conn.begin()
                assert await inbox.claim(conn, "m-2")
                await conn.rollback()  # the handler failed
            assert not await inbox.seen("m-2")
            async with engine.connect() as conn:
                with pytest.raises(ConfigurationError, match="inside a transaction"):
                    await inbox.claim(conn, "m-3")

    asyncio.run(main())
