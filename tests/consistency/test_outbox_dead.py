"""Issue 16, item 2: one unsendable outbox row no longer stops every event after it.

An event over the bus's size limit is refused when recorded, in the caller's
transaction; a row that got in anyway (recorded by a process that did not know the
limit) is moved to ``tidings_outbox_dead`` with the later rows of its topic and key,
and the other rows flow on. ``tidings outbox dead`` lists them; ``requeue`` sends them
once the limit allows, in their order.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from conformance.util import eventually
from tidings import App, Message, MessageTooLargeError
from tidings.cli import cli
from tidings.sqlalchemy import Outbox

from .conftest import database
from .services import create_test_tables, users

LIMIT = 4096
BIG = "x" * 6000


async def _tail(app: App, seen: list[Message]) -> None:
    @app.subscriber(["a", "b"], group="tail")
    async def tail(payload: dict[str, Any], message: Message) -> None:
        seen.append(message)


def test_an_event_over_the_limit_is_refused_in_the_callers_transaction(tmp_path: Path) -> None:
    async def main() -> None:
        async with database(f"sqlite+aiosqlite:///{tmp_path}/svc.db") as engine:
            await create_test_tables(engine)
            outbox = Outbox(engine)
            outbox.relay(App("svc", broker=f"sqlite:///{tmp_path}/bus.db?max_record_bytes={LIMIT}"))

            async def register() -> None:
                async with engine.begin() as conn:
                    await conn.execute(sa.insert(users).values(name="ann"))
                    await outbox.publish(conn, "a", {"pad": BIG})

            with pytest.raises(MessageTooLargeError, match="max_record_bytes=4096"):
                await register()
            async with engine.connect() as conn:
                assert (await conn.execute(sa.select(users))).all() == []  # rolled back
            assert await outbox.pending() == 0

    asyncio.run(main())


@pytest.mark.parametrize("found_by", ["relay's check", "bus refusal"])
def test_an_unsendable_row_is_dead_lettered_with_its_key_and_the_rest_flow(
        tmp_path: Path, found_by: str) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path}/svc.db"

    async def main() -> list[tuple[str | None, str]]:
        async with database(db) as engine:
            # Recorded by a process that did not know the bus's limit.
            unaware = Outbox(engine)
            async with engine.begin() as conn:
                for topic, key, body in [("a", "k1", "1"), ("a", "k2", BIG), ("a", "k2", "2"),
                                         ("b", "k2", "3"), ("a", "k3", "4"), ("a", None, "5")]:
                    await unaware.publish(conn, topic, {"n": body[:1]}
                                          if body != BIG else {"pad": BIG}, key=key)
            # The relay's own check finds the big row; or (a larger limit on the outbox
            # side) the bus refuses the batch and the relay finds the row one by one.
            outbox = Outbox(engine, max_record_bytes=None if found_by == "relay's check"
                            else 10**9)
            app = App("svc", broker=f"sqlite:///{tmp_path}/bus.db?max_record_bytes={LIMIT}")
            relay = outbox.relay(app, interval=0.02)
            seen: list[Message] = []
            await _tail(app, seen)
            async with app:
                await eventually(lambda: len(seen) == 4, 10, "the four sendable events")
                await asyncio.sleep(0.2)
                assert await outbox.pending() == 0
                assert relay.published == 4
            return [(m.key, m.topic + json.loads(m.body)["n"]) for m in seen]

    delivered = asyncio.run(main())
    # k2 on topic a waits behind its dead row; k2 on topic b is another stream.
    assert sorted(delivered, key=str) == sorted(
        [("k1", "a1"), ("k2", "b3"), ("k3", "a4"), (None, "a5")], key=str)

    listed = CliRunner().invoke(cli, ["--json", "outbox", "--db", db, "dead"])
    assert listed.exit_code == 0, listed.output
    dead = json.loads(listed.output)
    assert [(d["topic"], d["key"]) for d in dead] == [("a", "k2"), ("a", "k2")]
    assert "MessageTooLargeError" in dead[0]["error"] and dead[0]["size"] > LIMIT
    assert dead[0]["blocked_by"] is None and dead[1]["blocked_by"] == dead[0]["seq"]

    async def requeue_with_a_larger_limit() -> list[str]:
        async with database(db) as engine:
            outbox = Outbox(engine)
            assert await outbox.dead_letters().requeue() == 2
            app = App("svc", broker=f"sqlite:///{tmp_path}/bus.db?max_record_bytes={4 * LIMIT}")
            outbox.relay(app, interval=0.02)
            seen: list[Message] = []
            await _tail(app, seen)
            async with app:
                await eventually(lambda: len(seen) == 2, 10, "the requeued events")
            return [json.loads(m.body).get("n", "big") for m in seen]

    assert asyncio.run(requeue_with_a_larger_limit()) == ["big", "2"]  # in their order


def test_the_cli_lists_no_dead_rows_of_a_clean_outbox(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/svc.db"

    async def create() -> None:
        async with database(f"sqlite+aiosqlite:///{tmp_path}/svc.db"):
            pass

    asyncio.run(create())
    done = subprocess.run([sys.executable, "-m", "tidings.cli", "outbox", "--db", db, "dead"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "no dead outbox rows" in done.stdout


def test_a_database_without_the_dead_table_gets_it_when_the_relay_starts(
        tmp_path: Path) -> None:
    async def main() -> list[Message]:
        async with database(f"sqlite+aiosqlite:///{tmp_path}/svc.db") as engine:
            async with engine.begin() as conn:  # as made by an older version
                await conn.execute(sa.text("DROP TABLE tidings_outbox_dead"))
                await Outbox(engine).publish(conn, "a", {"pad": BIG}, key="k")
                await Outbox(engine).publish(conn, "a", {"n": "1"}, key="other")
            outbox = Outbox(engine)
            app = App("svc", broker=f"sqlite:///{tmp_path}/bus.db?max_record_bytes={LIMIT}")
            outbox.relay(app, interval=0.02)
            seen: list[Message] = []
            await _tail(app, seen)
            async with app:
                await eventually(lambda: len(seen) == 1, 10, "the small event")
                for _ in range(100):  # moved in the transaction that deletes the sent row
                    if await outbox.dead_letters().list():
                        break
                    await asyncio.sleep(0.05)
                assert len(await outbox.dead_letters().list()) == 1
            return seen

    assert [m.key for m in asyncio.run(main())] == ["other"]
