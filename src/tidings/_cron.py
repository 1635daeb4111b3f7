"""Cron schedules that fire once per tick across every instance of a service.

``cron(app, "*/5 * * * *")`` registers a job. Each job has a one-partition topic,
``tidings.cron.<app>.<job>``. All instances of the app join a ticker group on it; the
one that owns its partition is the ticker: at each tick it publishes a tick message
whose id is derived from the job and the tick time. The app's own subscriber on the
topic (one member of the app's group gets it) runs the job. A new ticker (after a
restart or when the old one died) reads the last tick back from the topic and, by the
job's :class:`CatchUp` policy, fires the ticks missed meanwhile, only the latest, or
none. Works on every backend; needs no database.

Guarantee: each tick is handled by one instance. Like every message, a tick is
delivered at least once: a crash between the job and the offset commit runs it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic
from cronsim import CronSim, CronSimError

from ._errors import ConfigurationError, NotRunningError, TransportError
from ._message import Headers, Message
from ._records import Start, TopicPartition
from ._retry import RetryPolicy
from ._subscriber import Role

if TYPE_CHECKING:
    from ._app import App
    from .ports import Subscription

__all__ = ["CatchUp", "CronError", "Schedule", "cron"]

log = logging.getLogger("tidings.cron")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


class CronError(ConfigurationError):
    """A cron expression or a cron job declaration is invalid."""


class CatchUp(enum.StrEnum):
    """What a new ticker does about the ticks nobody fired (the service was down)."""

    ALL = "all"  #: fire each missed tick, oldest first (at most ``max_catch_up``)
    LATEST = "latest"  #: fire the most recent missed tick once
    SKIP = "skip"  #: fire none; go on with the next tick


class Schedule:
    """A parsed cron expression in a time zone: five fields, or six with seconds first
    (``"*/10 * * * * *"`` is every ten seconds)."""

    def __init__(self, expression: str, timezone: tzinfo = UTC) -> None:
        if not isinstance(expression, str):
            raise CronError(f"a cron expression is a str, not {type(expression).__name__}")
        try:
            CronSim(expression, datetime.now(timezone))
        except (CronSimError, ValueError) as exc:
            raise CronError(f"invalid cron expression {expression!r}: {exc}") from None
        self.expression = expression
        self.timezone = timezone

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment``."""
        start = moment.astimezone(self.timezone)
        for tick in CronSim(self.expression, start):
            if tick > moment:
                return tick
        raise CronError(f"{self.expression!r} never fires")  # pragma: no cover

    def missed(self, after: datetime, until: datetime, limit: int) -> list[datetime]:
        """The latest ``limit`` ticks in ``(after, until]``, oldest first."""
        found: list[datetime] = []
        if limit <= 0:
            return found
        for tick in CronSim(self.expression, until.astimezone(self.timezone), reverse=True):
            if tick <= after or len(found) >= limit:
                break
            if tick <= until:
                found.append(tick)
        return found[::-1]


class _Tick(pydantic.BaseModel):
    job: str
    tick: datetime


def cron(app: App, expression: str, *, name: str | None = None,
         catch_up: CatchUp | str = CatchUp.LATEST, max_catch_up: int = 100,
         timezone: tzinfo = UTC, retry: RetryPolicy | None = None) -> Callable[[F], F]:
    """Run the decorated ``async def job()`` (or ``job(tick: datetime)``, the scheduled
    time) at every tick of ``expression`` on one instance of ``app``.

    ``name`` (default: the function's name) identifies the job across restarts.
    ``catch_up`` says what to do about ticks missed while no instance ran; ``retry``
    is the failed job's retry policy (default: the app's). Returns the function
    unchanged. Invalid input raises :class:`CronError` here.
    """
    schedule = Schedule(expression, timezone)
    try:
        policy = CatchUp(catch_up)
    except ValueError:
        raise CronError(f"catch_up must be one of {[c.value for c in CatchUp]}, "
                        f"not {catch_up!r}") from None
    if not isinstance(max_catch_up, int) or max_catch_up < 1:
        raise CronError(f"max_catch_up must be an int >= 1, not {max_catch_up!r}")

    def register(func: F) -> F:
        job_name = name if name is not None else str(getattr(func, "__name__", ""))
        job = _CronJob(app, job_name, schedule, policy, max_catch_up, func)
        app._register(Role.CRON, (job.topic,), partitions=1, retry=retry)(job.fire)
        app.on_startup(job.start)
        app.on_shutdown(job.stop)
        return func

    return register


def _takes_tick(func: Callable[..., Any]) -> bool:
    if not inspect.iscoroutinefunction(func):
        raise CronError(f"a cron job must be an async function, not {func!r}")
    params = list(inspect.signature(func).parameters.values())
    if len(params) > 1:
        raise CronError(f"cron job {func.__qualname__} takes no parameter or one (the tick "
                        f"time), not {len(params)}")
    return bool(params)


class _CronJob:
    """One job: its ticker (while this instance leads) and its tick handler."""

    def __init__(self, app: App, name: str, schedule: Schedule, catch_up: CatchUp,
                 max_catch_up: int, func: Callable[..., Awaitable[Any]]) -> None:
        if not _NAME.match(name):
            raise CronError(f"invalid cron job name {name!r}: use 1-100 letters, digits, "
                            "'_' or '-' (pass name=...)")
        self.takes_tick = _takes_tick(func)
        self.app, self.name, self.schedule, self.func = app, name, schedule, func
        self.catch_up, self.max_catch_up = catch_up, max_catch_up
        self.topic = f"tidings.cron.{app.name}.{name}"
        self._subscription: Subscription | None = None
        self._membership: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._last_handled: datetime | None = None
        self._stopping = False

    # -- running the job (the app's subscriber) -----------------------------------------

    async def fire(self, tick: _Tick, message: Message) -> None:
        """Run the job for one tick, unless this tick (or a later one) ran already."""
        if self._last_handled is not None and tick.tick <= self._last_handled:
            log.info("cron %s: tick %s came twice; skipped", self.name, tick.tick)
            return
        await (self.func(tick.tick) if self.takes_tick else self.func())
        self._last_handled = tick.tick

    # -- leading (the ticker group) -----------------------------------------------------

    async def start(self) -> None:
        """Join the ticker group (the app's startup hook)."""
        transport = self.app.transport
        await transport.ensure_topic(self.topic, 1)
        self._subscription = transport.subscribe(
            f"{self.app.name}.cron-ticker.{self.name}", [self.topic], self,
            start=Start.LATEST, client=self.app.instance_id,
        )
        self._membership = asyncio.create_task(self._stay_in_group(),
                                               name=f"tidings-cron-{self.name}")

    async def stop(self) -> None:
        """Stop ticking and leave the ticker group (the app's shutdown hook)."""
        self._stopping = True
        if self._membership is not None:
            self._membership.cancel()
            await asyncio.wait([self._membership])
        await self._stop_ticker()
        if self._subscription is not None:
            with contextlib.suppress(TransportError):
                await self._subscription.close()

    async def _stay_in_group(self) -> None:
        assert self._subscription is not None
        # The flag ends the loop even if a transport's fetch swallowed the cancellation.
        while not self._stopping:
            try:  # fetching keeps the membership alive and runs the rebalance callbacks
                await self._subscription.fetch(100, 0.25)
            except TransportError as exc:
                log.warning("cron %s: ticker group fetch failed: %s", self.name, exc)
                await asyncio.sleep(0.5)

    async def on_assigned(self, partitions: Collection[TopicPartition]) -> None:
        """This instance leads: start ticking."""
        if partitions and self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name=f"tidings-ticker-{self.name}")

    async def on_revoked(self, partitions: Collection[TopicPartition]) -> None:
        """Another instance leads now: stop ticking."""
        if partitions:
            await self._stop_ticker()

    async def on_lost(self, partitions: Collection[TopicPartition]) -> None:
        """Leadership was lost without notice: stop ticking."""
        await self.on_revoked(partitions)

    async def _stop_ticker(self) -> None:
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            # wait() rather than 'await ticker': a cancellation of *this* task (the
            # membership loop, inside on_revoked) must not be swallowed with the ticker's.
            await asyncio.wait([ticker])

    async def _tick(self) -> None:
        """Publish each tick on time while this instance leads; a failed publish of a
        tick is retried (the tick keeps its id, so a repeat is dropped)."""
        cursor: datetime | None = None
        while True:
            try:
                if cursor is None:
                    cursor = await self._catch_up()
                tick = self.schedule.next_after(cursor)
                delay = (tick - datetime.now(UTC)).total_seconds()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._publish(tick)
                cursor = tick
            except NotRunningError:
                return  # the app is stopping
            except Exception as exc:
                log.warning("cron %s: the ticker failed (%r); retrying in 1 s", self.name, exc)
                await asyncio.sleep(1.0)

    async def _catch_up(self) -> datetime:
        """Fire missed ticks by policy; return the moment to schedule from."""
        now = datetime.now(UTC)
        last = await self._last_fired()
        if last is None:
            return now
        limit = {CatchUp.ALL: self.max_catch_up, CatchUp.LATEST: 1, CatchUp.SKIP: 0}
        missed = self.schedule.missed(last, now, limit[self.catch_up])
        if missed:
            log.info("cron %s: catching up %d missed tick(s)", self.name, len(missed))
        for tick in missed:
            await self._publish(tick)
        return max(now, last)

    async def _last_fired(self) -> datetime | None:
        transport = self.app.transport
        info = next((t for t in await transport.describe_topics() if t.name == self.topic),
                    None)
        if info is None:
            return None
        start, end = info.start_offsets.get(0, 0), info.end_offsets.get(0, 0)
        if end <= start:
            return None
        records = await transport.read(self.topic, 0, max(start, end - 20), 20)
        ticks = []
        for record in records:
            with contextlib.suppress(pydantic.ValidationError):
                ticks.append(_Tick.model_validate_json(record.value).tick)
        return max(ticks, default=None)

    async def _publish(self, tick: datetime) -> None:
        message_id = f"cron-{self.app.name}-{self.name}-{tick.timestamp():.0f}"
        await self.app._publish(self.topic, _Tick(job=self.name, tick=tick), key=self.name,
                                reserved={Headers.ID: message_id})
