"""The bus and the services' databases hold payloads (card numbers): another local user
must not be able to read them. Files tidings creates are 0600, its folders 0700."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tidings import App
from tidings.sqlalchemy import sqlite_engine


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    previous = os.umask(0o022)  # the common default, which gives 0644 and 0755
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_sqlite_bus_and_its_journals_are_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "data" / "bus.db"

    async def main() -> None:
        async with App("private", broker=f"sqlite:///{path}") as app:
            await app.publish("payments", {"card": "4242424242424242"})
            assert {p.name for p in path.parent.iterdir()} >= {
                "bus.db", "bus.db-wal", "bus.db-shm"}
            for file in path.parent.iterdir():
                assert mode(file) == 0o600, file

    asyncio.run(main())
    assert mode(path) == 0o600
    assert mode(path.parent) == mode(path.parent.parent) == 0o700


def test_a_service_database_and_its_journals_are_private(tmp_path: Path) -> None:
    path = tmp_path / "svc" / "orders.db"

    async def main() -> None:
        engine = sqlite_engine(path)
        try:
            async with engine.begin() as conn:
                await conn.execute(sa.text("CREATE TABLE cards (number TEXT)"))
                await conn.execute(sa.text("INSERT INTO cards VALUES ('4242424242424242')"))
            for file in path.parent.iterdir():
                assert mode(file) == 0o600, file
            assert {p.name for p in path.parent.iterdir()} >= {"orders.db", "orders.db-wal"}
        finally:
            await engine.dispose()

    asyncio.run(main())
    assert mode(path.parent) == 0o700
