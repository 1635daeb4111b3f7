"""Projections on real databases: exact counts, rebuilds, failures that stop rather than
skip, concurrent writers leaving gaps, a SIGKILLed projection process, and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tidings import App, testing
from tidings.cli import cli
from tidings.eventsourcing import Projection, ProjectionError, Recorded, UpcastError
from tidings.eventsourcing.sqlalchemy import EventStore, Projections, events_table

from .conftest import database
from .domain import ItemAdded, Order, counter, counts, events

CHILD = Path(__file__).with_name("child.py")
ROOT = Path(__file__).resolve().parents[2]


async def seed(store: EventStore, orders: int, items: int, prefix: str = "o") -> None:
    for n in range(orders):
        order = Order.place(f"{prefix}-{n}", f"c{n}")
        for i in range(items):
            order.add(f"sku-{i}", "1")
        await store.save(order)


async def counted(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        return {r.stream_id: r.n for r in (await conn.execute(sa.select(counts))).all()}


async def stored(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(events_table.c.stream_id))).all()
    return dict(Counter(r.stream_id for r in rows))


def test_counts_exactly_catches_up_and_rebuilds(db_url: str) -> None:
    async def main() -> None:
        async with database(db_url) as engine:
            store = EventStore(engine, events)
            projections = Projections(store, counter, batch=7)
            await seed(store, 5, 3)
            seen: list[tuple[int, int]] = []
            assert await projections.catch_up("event-counts",
                                              progress=lambda d, t: seen.append((d, t))) == 20
            assert seen[0] == (0, 20) and seen[-1] == (20, 20)
            assert await counted(engine) == await stored(engine)
            assert await projections.run_once("event-counts") == 0
            await seed(store, 2, 1, prefix="p")
            assert await projections.catch_up("event-counts") == 4
            assert await counted(engine) == await stored(engine)
            assert await projections.rebuild("event-counts") == 24
            assert await counted(engine) == await stored(engine)  # cleared, not doubled
            [status] = await projections.status()
            assert (status.position, status.lag, status.error) == (status.head, 0, None)

    asyncio.run(main())


def test_a_failing_handler_stops_before_the_event_and_keeps_nothing_of_its_batch(
        tmp_path: Path) -> None:
    broken = {"on": True}
    totals = Projection("item-counts")

    @totals.on(ItemAdded)
    async def on_item(recorded: Recorded[ItemAdded], session: AsyncSession) -> None:
        if broken["on"] and recorded.stream_id == "o-2" and recorded.event.sku == "sku-1":
            raise RuntimeError("read model says no")
        await session.execute(sa.insert(counts).values(
            stream_id=f"{recorded.stream_id}/{recorded.version}", n=1))

    async def main() -> None:
        async with database(f"sqlite+aiosqlite:///{tmp_path}/s.db") as engine:
            store = EventStore(engine, events)
            await seed(store, 4, 2)  # o-2's sku-1 is version 3, position 9
            projections = Projections(store, totals, batch=5)
            with pytest.raises(ProjectionError, match="RuntimeError: read model says no") as info:
                await projections.catch_up("item-counts")
            assert (info.value.stream_id, info.value.version, info.value.position) == ("o-2", 3, 9)
            [status] = await projections.status()
            assert status.position == 5  # the batch with position 9 left nothing
            assert len(await counted(engine)) == 3  # the items at positions 2, 3 and 5
            broken["on"] = False
            await projections.catch_up("item-counts")
            assert len(await counted(engine)) == 8

    asyncio.run(main())


def test_an_event_no_upcaster_can_read_stops_the_projection(tmp_path: Path) -> None:
    async def main() -> None:
        async with database(f"sqlite+aiosqlite:///{tmp_path}/s.db") as engine:
            store = EventStore(engine, events)
            await seed(store, 1, 1)
            async with engine.begin() as conn:
                await conn.execute(sa.update(events_table).where(events_table.c.version == 2)
                                   .values(schema_version=7))
            projections = Projections(store, counter)
            with pytest.raises(UpcastError, match="version 2 of stream 'o-0'"):
                await projections.catch_up("event-counts")
            assert await counted(engine) == {}

    asyncio.run(main())


def test_concurrent_writers_with_gaps_never_make_a_projection_skip(db_url: str) -> None:
    """Writers commit slowly and in any order, and some roll back (holes in the
    positions), while two runners follow in the background: every committed event
    is counted exactly once."""
    async def writer(engine: AsyncEngine, store: EventStore, n: int) -> None:
        for i in range(12):
            order = Order.place(f"w{n}-{i}", "c")
            order.add("a", "1")
            async with engine.connect() as conn:
                transaction = await conn.begin()
                await store.save(order, session=conn)
                await asyncio.sleep(random.random() / 100)  # commit late
                if i % 5 == 4:
                    await transaction.rollback()
                else:
                    await transaction.commit()

    async def main() -> None:
        async with database(db_url) as engine:
            store = EventStore(engine, events)
            app = App("reader", broker=testing.memory_url())
            Projections(store, counter, batch=3, interval=0.01).attach(app)
            other = Projections(store, counter, batch=4, interval=0.01)
            async with app, other:
                await asyncio.gather(*(writer(engine, store, n) for n in range(5)))
                await asyncio.sleep(0.2)
            await Projections(store, counter).catch_up("event-counts")
            expected = await stored(engine)
            assert len(expected) == 5 * 12 - 5 * 2
            assert await counted(engine) == expected

    asyncio.run(main())


def test_a_projection_process_killed_mid_batch_resumes_with_exact_counts(
        db_url: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with database(db_url) as engine:
            store = EventStore(engine, events)
            await seed(store, 100, 9)  # 1,000 events, positions 1..1000
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        log = open(tmp_path / "child.log", "wb")  # noqa: SIM115
        child = subprocess.Popen([sys.executable, str(CHILD), db_url, "450"],
                                 stdout=subprocess.PIPE, stderr=log, env=env)
        try:
            lines = [json.loads(line) for line in _lines_until(child, "stalled")]
            assert [line["done"] for line in lines if line["event"] == "batch"][-1] == 400
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            async with database(db_url) as engine:
                assert sum((await counted(engine)).values()) == 400  # batch 401.. was lost
            done = subprocess.run([sys.executable, str(CHILD), db_url], capture_output=True,
                                  env=env, timeout=60, check=True)
            assert json.loads(done.stdout.splitlines()[-1]) == {"event": "done", "events": 600}
            async with database(db_url) as engine:
                assert await counted(engine) == await stored(engine)
                assert sum((await counted(engine)).values()) == 1000
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
            if child.stdout is not None:
                child.stdout.close()
            log.close()

    asyncio.run(main())


def _lines_until(child: subprocess.Popen[bytes], event: str) -> list[bytes]:
    assert child.stdout is not None
    lines = []
    while True:
        line = child.stdout.readline()
        assert line, f"child exited with {child.wait()} before {event!r}"
        lines.append(line)
        if json.loads(line)["event"] == event:
            return lines


def test_cli_rebuilds_with_a_progress_bar_and_shows_status(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/s.db"

    async def setup() -> None:
        async with database(url) as engine:
            await seed(EventStore(engine, events), 10, 4)

    asyncio.run(setup())
    monkeypatch.setenv("TIDINGS_TEST_DB", url)
    runner = CliRunner()
    result = runner.invoke(cli, ["projections", "--registry", "eventsourcing.domain:registry",
                                 "rebuild", "event-counts"])
    assert result.exit_code == 0, result.output
    assert "rebuilt event-counts: 50 events" in result.stdout
    assert "rebuilding event-counts" in result.stderr  # the bar draws itself on a TTY only
    result = runner.invoke(cli, ["--json", "projections", "--registry",
                                 "eventsourcing.domain:registry", "status"])
    assert json.loads(result.stdout) == [
        {"name": "event-counts", "position": 50, "head": 50, "lag": 0, "error": None}]
    result = runner.invoke(cli, ["projections", "--registry", "eventsourcing.domain:registry",
                                 "rebuild", "nope"])
    assert result.exit_code == 1 and "no projection 'nope' (known: event-counts)" in result.stderr
    result = runner.invoke(cli, ["projections", "rebuild", "x"], env={"TIDINGS_PROJECTIONS": ""})
    assert result.exit_code == 2 and "--registry MODULE:OBJECT" in result.stderr


def test_before_commit_writes_what_a_batch_gathered(tmp_path: Path) -> None:
    gathered = Projection("gathered")

    @gathered.on(ItemAdded)
    async def gather(recorded: Recorded[ItemAdded], session: AsyncSession) -> None:
        seen = session.info.setdefault("seen", {})
        seen[recorded.stream_id] = seen.get(recorded.stream_id, 0) + 1

    @gathered.before_commit
    async def write(session: AsyncSession) -> None:
        for stream_id, n in session.info.get("seen", {}).items():
            result = await session.execute(sa.update(counts).where(
                counts.c.stream_id == stream_id).values(n=counts.c.n + n))
            if result.rowcount == 0:
                await session.execute(sa.insert(counts).values(stream_id=stream_id, n=n))

    async def main() -> None:
        async with database(f"sqlite+aiosqlite:///{tmp_path}/s.db") as engine:
            store = EventStore(engine, events)
            await seed(store, 6, 4)
            await Projections(store, gathered, batch=7).catch_up("gathered")
            assert await counted(engine) == {f"o-{n}": 4 for n in range(6)}

    asyncio.run(main())
