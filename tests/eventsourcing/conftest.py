"""Fixtures of the event sourcing suite: a real database per test (a SQLite file, or a
fresh database on a real PostgreSQL started for the session)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.eventsourcing.sqlalchemy import create_tables

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from postgres_server import fresh_database, postgres_server  # noqa: E402, F401

from .domain import make_engine, read_metadata  # noqa: E402


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The service's database: a SQLite file, or a fresh database on a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/service.db"
    return fresh_database(request.getfixturevalue("postgres_server"))


@asynccontextmanager
async def database(url: str) -> AsyncIterator[AsyncEngine]:
    """An engine with the event store's, the outbox's and the test read model's tables."""
    engine = make_engine(url)
    try:
        await create_tables(engine)
        async with engine.begin() as conn:
            await conn.run_sync(read_metadata.create_all)
        yield engine
    finally:
        await engine.dispose()
