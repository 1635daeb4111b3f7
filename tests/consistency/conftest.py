"""Fixtures of the consistency suite: a service database (SQLite file or a real
PostgreSQL), a bus on each backend, and child processes to SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings import testing
from tidings.sqlalchemy import create_tables

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from postgres_server import fresh_database, postgres_server  # noqa: E402, F401

from .services import make_engine  # noqa: E402

CHILD = Path(__file__).with_name("child.py")

#: (database, bus) pairs: each database with the embedded bus, plus a real broker.
KAFKA = (ROOT / "tests" / "kafka_broker.py").exists() and \
    (ROOT / "src" / "tidings" / "backends" / "kafka" / "__init__.py").exists()
CRASH_STACKS = [("sqlite", "sqlite"), ("postgres", "sqlite")]
if KAFKA:  # the kafka_url fixture comes from tests/conftest.py
    CRASH_STACKS.append(("postgres", "kafka"))
STACKS = [("sqlite", "memory"), *CRASH_STACKS]


@dataclass(frozen=True)
class Stack:
    """A service database URL and a bus URL, isolated for one test."""

    db: str
    bus: str


def _db(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if name == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/service.db"
    return fresh_database(request.getfixturevalue("postgres_server"))


def _bus(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if name == "memory":
        return testing.memory_url(session_timeout=1.5)
    if name == "sqlite":
        return f"sqlite:///{tmp_path}/bus.db?session_timeout=1.5"
    return str(request.getfixturevalue("kafka_url"))


def _ids(pair: tuple[str, str]) -> str:
    return f"{pair[0]}-db+{pair[1]}-bus"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The service's database: a SQLite file, or a fresh database on a real PostgreSQL."""
    return _db(request.param, request, tmp_path)


@pytest.fixture(params=STACKS, ids=_ids)
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Stack:
    """A database and a bus: SQLite+memory, SQLite+sqlite, PostgreSQL+sqlite, PostgreSQL+kafka."""
    db, bus = request.param
    return Stack(_db(db, request, tmp_path), _bus(bus, request, tmp_path))


@pytest.fixture(params=CRASH_STACKS, ids=_ids)
def shared_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Stack:
    """A database and a bus that several OS processes share (for SIGKILL tests)."""
    db, bus = request.param
    return Stack(_db(db, request, tmp_path), _bus(bus, request, tmp_path))


@asynccontextmanager
async def database(url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on ``url`` with the toolkit's tables, disposed afterwards."""
    engine = make_engine(url)
    try:
        await create_tables(engine)
        yield engine
    finally:
        await engine.dispose()


@dataclass
class Child:
    """A child process from child.py that prints one JSON line per event."""

    proc: subprocess.Popen[bytes]

    async def line(self, timeout: float = 20.0) -> dict[str, Any]:
        """The next JSON line it prints."""
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout)
        if not raw:
            raise AssertionError(f"child exited with {self.proc.wait()} before printing")
        data: dict[str, Any] = json.loads(raw)
        return data

    async def wait_for(self, event: str, timeout: float = 20.0) -> dict[str, Any]:
        """Read lines until one whose ``event`` is ``event``."""
        while True:
            line = await self.line(timeout)
            if line.get("event") == event:
                return line

    async def exit_code(self, timeout: float = 20.0) -> int:
        """Wait for it to exit."""
        return await asyncio.to_thread(self.proc.wait, timeout)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    """Start child.py scenarios; every child still alive at the end is killed."""
    children: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> Child:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        with open(tmp_path / "child.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, str(CHILD), *args],
                                    stdout=subprocess.PIPE, stderr=log, env=env)
        children.append(proc)
        return Child(proc)

    yield start
    for proc in children:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
