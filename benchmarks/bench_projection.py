"""Projection rebuild speed over 100,000 stored events, with same-run baselines.

Prints JSON. For each database (a SQLite file; PostgreSQL too when its binaries are
found, see tests/postgres_server.py) it stores N events (10 per order stream) and times:

- ``raw_scan``: the same rows read in keyset pages of ``batch`` through the same async
  engine, JSON-decoded (and on SQLite also with the stdlib ``sqlite3``): the floor;
- ``rebuild_noop``: ``tidings projections rebuild`` with handlers that do nothing:
  the runner's own cost (reading, decoding into pydantic, batching, the position);
- ``rebuild_counts``: a read model counting events per stream (an UPDATE, and an
  INSERT for a new stream, per event), the shape of a typical projection;
- ``rebuild_counts_batched``: the same read model, gathered in ``session.info`` and
  written once per batch by a ``before_commit`` handler.

Usage: python benchmarks/bench_projection.py [--events 100000] [--batch 1000] [--db sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from tidings.eventsourcing import EventRegistry, Projection, Recorded
from tidings.eventsourcing.sqlalchemy import EventStore, Projections, create_tables, events_table

ROOT = Path(__file__).resolve().parents[1]


class OrderPlaced(BaseModel):
    customer: str
    total: Decimal


class ItemAdded(BaseModel):
    sku: str
    price: Decimal


events = EventRegistry(OrderPlaced, ItemAdded)
read = sa.MetaData()
counts = sa.Table("bench_counts", read, sa.Column("stream_id", sa.String(200), primary_key=True),
                  sa.Column("n", sa.Integer(), nullable=False))

noop = Projection("noop")


@noop.on(OrderPlaced, ItemAdded)
async def _ignore(recorded: Recorded[Any], session: AsyncSession) -> None:
    return None


counter = Projection("counts")


@counter.on(OrderPlaced, ItemAdded)
async def _count(recorded: Recorded[Any], session: AsyncSession) -> None:
    result: Any = await session.execute(sa.update(counts).where(
        counts.c.stream_id == recorded.stream_id).values(n=counts.c.n + 1))
    if result.rowcount == 0:
        await session.execute(sa.insert(counts).values(stream_id=recorded.stream_id, n=1))


@counter.on_reset
async def _clear(session: AsyncSession) -> None:
    await session.execute(sa.delete(counts))


batched = Projection("counts-batched")


@batched.on(OrderPlaced, ItemAdded)
async def _gather(recorded: Recorded[Any], session: AsyncSession) -> None:
    gathered = session.info.setdefault("counts", {})
    gathered[recorded.stream_id] = gathered.get(recorded.stream_id, 0) + 1


@batched.before_commit
async def _write(session: AsyncSession) -> None:
    gathered: dict[str, int] = session.info.get("counts", {})
    known = set((await session.execute(sa.select(counts.c.stream_id).where(
        counts.c.stream_id.in_(list(gathered))))).scalars())
    updates = [{"s": s, "d": d} for s, d in gathered.items() if s in known]
    if updates:
        await session.execute(sa.update(counts).where(counts.c.stream_id == sa.bindparam("s"))
                              .values(n=counts.c.n + sa.bindparam("d")), updates)
    inserts = [{"stream_id": s, "n": d} for s, d in gathered.items() if s not in known]
    if inserts:
        await session.execute(sa.insert(counts), inserts)


batched.on_reset(_clear)


def _rows(total: int) -> Iterator[dict[str, Any]]:
    now = time.time()
    for n in range(total):
        stream, version = divmod(n, 10)
        event: BaseModel = OrderPlaced(customer=f"c{stream}", total=Decimal("10.50")) \
            if version == 0 else ItemAdded(sku=f"sku-{version}", price=Decimal("1.25"))
        entry, data = events.encode(event)
        yield {"stream_id": f"order-{stream}", "stream_type": "Order", "version": version + 1,
               "event_type": entry.name, "schema_version": entry.version,
               "event_id": uuid.uuid4().hex, "data": data, "meta": "{}", "recorded_at": now}


async def seed(engine: AsyncEngine, total: int) -> None:
    await create_tables(engine)
    async with engine.begin() as conn:
        await conn.run_sync(read.create_all)
    rows = list(_rows(total))
    for start in range(0, total, 5000):
        async with engine.begin() as conn:
            await conn.execute(sa.insert(events_table), rows[start:start + 5000])


async def raw_scan(engine: AsyncEngine, batch: int) -> int:
    count, after = 0, 0
    async with engine.connect() as conn:
        while True:
            rows = (await conn.execute(sa.select(events_table).where(
                events_table.c.position > after).order_by(events_table.c.position)
                .limit(batch))).all()
            if not rows:
                return count
            for row in rows:
                json.loads(row.data)
            count += len(rows)
            after = rows[-1].position


def sqlite3_scan(path: str, batch: int) -> int:
    conn = sqlite3.connect(path)
    count, after = 0, 0
    while True:
        rows = conn.execute("SELECT position, data FROM tidings_events WHERE position > ? "
                            "ORDER BY position LIMIT ?", (after, batch)).fetchall()
        if not rows:
            conn.close()
            return count
        for _, data in rows:
            json.loads(data)
        count += len(rows)
        after = rows[-1][0]


def timed(count: int, started: float) -> dict[str, float]:
    seconds = time.perf_counter() - started
    return {"events": count, "seconds": round(seconds, 3),
            "events_per_s": round(count / seconds)}


def make_engine(url: str) -> AsyncEngine:
    """As a service configures it: SQLite in WAL mode (what tests/consistency uses)."""
    engine = create_async_engine(url)
    if url.startswith("sqlite"):
        @event.listens_for(engine.sync_engine, "connect")
        def wal(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")

    return engine


async def bench(url: str, total: int, batch: int, sqlite_path: str | None) -> dict[str, Any]:
    engine = make_engine(url)
    try:
        started = time.perf_counter()
        await seed(engine, total)
        result: dict[str, Any] = {"seed_seconds": round(time.perf_counter() - started, 1)}
        started = time.perf_counter()
        result["raw_scan"] = timed(await raw_scan(engine, batch), started)
        if sqlite_path is not None:
            started = time.perf_counter()
            result["raw_scan_sqlite3"] = timed(sqlite3_scan(sqlite_path, batch), started)
        projections = Projections(EventStore(engine, events), noop, counter, batched,
                                  batch=batch)
        for name in ("noop", "counts", "counts-batched"):
            started = time.perf_counter()
            result[f"rebuild_{name.replace('-', '_')}"] = timed(
                await projections.rebuild(name), started)
            if name != "noop":
                async with engine.connect() as conn:
                    counted = await conn.scalar(sa.select(sa.func.sum(counts.c.n)))
                assert counted == total, (name, counted, total)
        return result
    finally:
        await engine.dispose()


@contextlib.contextmanager
def postgres() -> Iterator[str | None]:
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from postgres_server import fresh_database, running_postgres
    except ImportError:
        yield None
        return
    try:
        with running_postgres() as server:
            yield fresh_database(server)
    except RuntimeError as exc:  # no binaries on this machine
        print(f"postgres skipped: {exc}", file=sys.stderr)
        yield None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    report: dict[str, Any] = {"events": args.events, "batch": args.batch,
                              "python": sys.version.split()[0]}
    if args.db in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            path = f"{tmp}/bench.db"
            report["sqlite"] = asyncio.run(bench(f"sqlite+aiosqlite:///{path}", args.events,
                                                 args.batch, path))
    if args.db in ("postgres", "both"):
        with postgres() as url:
            if url is not None:
                report["postgres"] = asyncio.run(bench(url, args.events, args.batch, None))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
