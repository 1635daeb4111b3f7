"""Issue 16, item 1: a publisher cannot forge the runtime's ``tidings-*`` headers, nor
guess another process's next message id, nor make a responder reply into any topic."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tidings import App, ConfigurationError, Headers, Outgoing, testing
from tidings._ids import new_id
from tidings._records import OutRecord
from tidings.sqlalchemy import Outbox, create_tables, sqlite_engine

FORGED = [Headers.DLQ_RESOLVES, Headers.REDRIVE_GROUP, Headers.REPLY_TO, Headers.ID,
          "Tidings-Id", "tidings-anything"]


@pytest.mark.parametrize("name", FORGED)
def test_every_publishing_call_refuses_a_reserved_header(name: str) -> None:
    forged = {name: "x", "trace": "ok"}

    async def main() -> None:
        app = App("forger", broker=testing.memory_url())
        async with app:
            calls = [
                lambda: app.publish("t", {}, headers=forged),
                lambda: app.publish_batch([Outgoing("t", {}), Outgoing("t", {}, headers=forged)]),
                lambda: app.enqueue("q", {}, headers=forged),
                lambda: app.request("t", {}, headers=forged, timeout=0.5),
            ]
            for call in calls:
                with pytest.raises(ConfigurationError, match="reserved"):
                    await call()
            await app.publish("t", {}, headers={"trace": "ok"})  # others are fine
            assert [r.headers.get("trace") for r in await app.transport.read("t", 0, 0, 9)
                    ] == ["ok"], "nothing refused was appended"

    asyncio.run(main())


def test_the_outbox_refuses_a_reserved_header_before_writing(tmp_path: Path) -> None:
    async def main() -> int:
        engine = sqlite_engine(tmp_path / "svc.db")
        await create_tables(engine)
        outbox = Outbox(engine)
        try:
            async with engine.begin() as conn:
                with pytest.raises(ConfigurationError, match="reserved"):
                    await outbox.publish(conn, "t", {}, headers={Headers.ID: "stolen"})
                await outbox.publish(conn, "t", {}, headers={"trace": "ok"})
            return await outbox.pending()
        finally:
            await engine.dispose()

    assert asyncio.run(main()) == 1


def test_message_ids_are_unpredictable() -> None:
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    # A fixed per-process prefix plus a counter let anyone who saw one id compute the
    # next: no two ids here share even their first 12 hex digits (48 random bits).
    assert len({i[:12] for i in ids}) == len(ids)
    assert len({i[-12:] for i in ids}) == len(ids)


def test_a_forked_child_never_repeats_its_parents_ids() -> None:
    new_id()  # the parent's pool is filled
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, ",".join(new_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split(","))
    parent = {new_id() for _ in range(50)}
    assert len(child) == 50 and not child & parent


def test_a_responder_replies_only_to_the_replies_topic() -> None:
    async def main() -> tuple[list[object], object]:
        app = App("svc", broker=testing.memory_url())

        @app.responder("quote")
        async def quote(payload: dict) -> dict:
            return {"price": 3}

        async with app:
            await app.transport.ensure_topic("victim", 1)
            # A raw producer (not app.request, which refuses the header) forges reply-to.
            await app.transport.append([OutRecord(
                "quote", b"{}", headers={Headers.ID: "r1", Headers.REPLY_TO: "victim"})])
            answer = await app.request("quote", {}, timeout=5)  # served after the forgery
            return await app.transport.read("victim", 0, 0, 9), answer

    victim, answer = asyncio.run(main())
    assert answer == {"price": 3}
    assert victim == []


def test_the_cli_refuses_a_reserved_header_in_one_line() -> None:
    from click.testing import CliRunner

    from tidings.cli import cli

    result = CliRunner().invoke(cli, ["--broker", testing.memory_url(), "publish", "t", "{}",
                                      "--header", "tidings-redrive-group=other"])
    assert result.exit_code == 1
    assert "'tidings-redrive-group' is reserved" in result.output
    assert "Traceback" not in result.output
