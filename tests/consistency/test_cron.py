"""Cron schedules: one firing per tick across instances, catch-up or skip after downtime,
and definition-time errors."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conformance.util import eventually
from tidings import App, ConfigurationError, testing
from tidings._cron import CatchUp, CronError, Schedule, cron

EVERY_SECOND = "* * * * * *"  # six fields: seconds first


def test_bad_cron_declarations_fail_at_definition_time() -> None:
    app = App("svc", broker=testing.memory_url())

    async def job() -> None: ...

    with pytest.raises(CronError, match="invalid cron expression '61 \\* \\* \\* \\*'"):
        cron(app, "61 * * * *")
    with pytest.raises(CronError, match="invalid cron expression"):
        cron(app, "every five minutes")
    with pytest.raises(ConfigurationError, match="catch_up must be one of"):
        cron(app, "*/5 * * * *", catch_up="sometimes")
    with pytest.raises(CronError, match="async function"):
        cron(app, "*/5 * * * *", name="sync")(lambda: None)
    with pytest.raises(CronError, match="invalid cron job name"):
        cron(app, "*/5 * * * *", name="no spaces")(job)

    async def two(a: datetime, b: int) -> None: ...

    with pytest.raises(CronError, match="no parameter or one"):
        cron(app, "*/5 * * * *")(two)
    assert cron(app, "*/5 * * * *")(job) is job  # returned unchanged


def test_schedule_lists_missed_ticks() -> None:
    schedule = Schedule("*/10 * * * *")
    start = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    assert schedule.next_after(start) == start + timedelta(minutes=10)
    missed = schedule.missed(start, start + timedelta(minutes=35), 100)
    assert missed == [start + timedelta(minutes=m) for m in (10, 20, 30)]
    assert schedule.missed(start, start + timedelta(minutes=35), 1) == [missed[-1]]


def _job(app: App, fired: list[tuple[str, datetime]], who: str, **options: Any) -> None:
    @cron(app, EVERY_SECOND, name="heartbeat", **options)
    async def heartbeat(tick: datetime) -> None:
        fired.append((who, tick))


def test_several_instances_fire_each_tick_once() -> None:
    async def main() -> None:
        bus = testing.memory_url(session_timeout=1.0)
        fired: list[tuple[str, datetime]] = []
        apps = [App("reports", broker=bus) for _ in range(3)]
        for n, app in enumerate(apps):
            _job(app, fired, f"instance-{n}")
        async with apps[0], apps[1], apps[2]:
            await asyncio.sleep(3.2)
        ticks = [tick for _, tick in fired]
        assert len(ticks) >= 3
        assert len(ticks) == len(set(ticks)), f"a tick fired twice: {fired}"
        seconds = sorted(int(t.timestamp()) for t in ticks)
        assert seconds == list(range(seconds[0], seconds[0] + len(seconds))), "a tick missed"

    asyncio.run(main())


async def _downtime(policy: CatchUp) -> tuple[datetime, list[datetime], datetime]:
    """Run the job, stop it for ~2.6 s, start it again; return the last tick before the
    downtime, the ticks the new instance fired, and when it stopped."""
    bus = testing.memory_url(session_timeout=1.0)
    keeper = App("keeper", broker=bus)  # keeps the in-memory broker alive meanwhile
    fired: list[tuple[str, datetime]] = []
    async with keeper:
        first = App("reports", broker=bus)
        _job(first, fired, "first", catch_up=policy)
        async with first:
            await eventually(lambda: bool(fired), 5, "a first tick")
        last = max(t for _, t in fired)
        await asyncio.sleep(2.6)  # the service is down: 2 or 3 ticks pass
        second = App("reports", broker=bus)
        _job(second, fired, "second", catch_up=policy)
        async with second:
            await asyncio.sleep(0.4)
            stopped_at = datetime.now(UTC)
    return last, [t for who, t in fired if who == "second"], stopped_at


def test_after_downtime_missed_ticks_are_caught_up_or_skipped() -> None:
    async def main() -> None:
        policies = [CatchUp.ALL, CatchUp.LATEST, CatchUp.SKIP]
        results = await asyncio.gather(*(_downtime(p) for p in policies))
        for policy, (last, caught, stopped_at) in zip(policies, results, strict=True):
            missed = [t for t in caught if t <= stopped_at - timedelta(seconds=0.4)]
            if policy is CatchUp.ALL:
                start = int(last.timestamp()) + 1
                gap = [int(t.timestamp()) for t in missed]
                assert len(gap) >= 2 and gap == list(range(start, start + len(gap))), gap
            else:
                expected = 1 if policy is CatchUp.LATEST else 0
                assert len(missed) == expected, (policy, missed, caught, last)

    asyncio.run(main())
