"""``TestBus``: run apps on a fresh in-memory broker, see what they published, wait
until they are idle, and skip delays with a fake clock (see :mod:`tidings.testing`)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from ._app import App
from ._backends import load_transport
from ._dlq import DeadLetter
from ._errors import ConfigurationError
from ._message import Headers, Message
from ._parklog import ParkIndex, park_topic
from ._records import Record, TopicPartition
from ._reply import REPLIES_TOPIC, ReplyListener
from .asyncapi import APPS_TOPIC
from .backends.memory import MemoryBroker, MemoryTransport

__all__ = ["FakeClock", "TestBus"]

#: How often ``idle()`` looks at the bus (seconds): a look costs microseconds.
_POLL = 0.005
PARK_PREFIX = park_topic("")


class FakeClock:
    """Time for the event loop that can jump ahead: retry backoffs, ``asyncio.sleep``
    and every other loop timer see it; delayed publishes are released by the bus.

    Wall-clock time (``time.time()``, message timestamps) is left alone.
    """

    def __init__(self) -> None:
        self.offset = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make ``loop``'s clock this one (until :meth:`uninstall`)."""
        real = loop.time
        try:
            loop.time = lambda: real() + self.offset  # type: ignore[method-assign]
        except AttributeError:  # uvloop and other loops written in C
            raise ConfigurationError(
                f"a fake clock needs asyncio's own event loop, not {type(loop).__name__}"
            ) from None
        self._loop = loop

    def uninstall(self) -> None:
        """Give the loop its own clock back."""
        if self._loop is not None:
            del self._loop.time
            self._loop = None

    def advance(self, seconds: float) -> None:
        """Move the loop's time ``seconds`` ahead: timers due by then fire at once."""
        if seconds < 0:
            raise ValueError("a clock only moves forward")
        self.offset += seconds


class TestBus:
    """Runs ``apps`` on one fresh ``memory://`` broker, for a test.

    ``async with TestBus(app) as bus:`` moves each app (not yet started) to the bus's
    broker, starts it, and stops it at the end. Then ``await bus.idle()`` returns once
    every message published so far was handled (committed by every group, including
    retries, dead letters and delayed messages; with ``clock=True``, delays and retry
    backoffs are skipped), and ``bus.published(topic)`` lists what is on a topic, as
    :class:`~tidings.Message` envelopes in log order.
    """

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, *apps: App, clock: bool = False, partitions: int = 4) -> None:
        self.apps = apps
        self.url = f"memory://testbus-{uuid.uuid4().hex}?partitions={partitions}"
        self.transport = load_transport(self.url)
        assert isinstance(self.transport, MemoryTransport)
        self.broker: MemoryBroker = self.transport.broker
        self.clock = FakeClock() if clock else None

    async def __aenter__(self) -> TestBus:
        if self.clock is not None:
            self.clock.install(asyncio.get_running_loop())
        for app in self.apps:
            _move(app, self.url)
        started: list[App] = []
        try:
            for app in self.apps:
                await app.start()
                started.append(app)
        except BaseException:
            await _stop_all(started)
            self._release_clock()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await _stop_all(self.apps)
        finally:
            self._release_clock()

    def _release_clock(self) -> None:
        if self.clock is not None:
            self.clock.uninstall()

    # -- waiting -------------------------------------------------------------------

    async def idle(self, timeout: float = 10.0) -> None:
        """Wait until every group has handled (committed) every message of its topics and
        no delayed message waits; with the fake clock, skip ahead whenever only time is
        left to wait for. TimeoutError (saying what is pending) after ``timeout`` real
        seconds."""
        deadline = time.monotonic() + timeout
        last: object = None
        stalled, step = 0, 0.05
        while True:
            pending = self.pending()
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the bus is not idle after {timeout:g} s: "
                                   + "; ".join(pending))
            progress = (self._positions(), self.broker.scheduled)
            stalled = stalled + 1 if progress == last else 0
            last = progress
            if self.clock is not None and stalled >= 2:
                step = self._skip_ahead(step)
            elif stalled == 0:
                step = 0.05
            await asyncio.sleep(_POLL)

    def _skip_ahead(self, step: float) -> float:
        """Release the next delayed message, else move the loop's clock (doubling steps
        until something moves); the next step."""
        assert self.clock is not None
        if self.broker.release_next() is not None:
            return step
        self.clock.advance(step)
        return min(step * 2, 3600.0)

    def _positions(self) -> tuple[int, ...]:
        ends = sum(len(log) for parts in self.broker.topics.values() for log in parts)
        commits = sum(sum(g.committed.values()) for g in self.broker.groups.values())
        return ends, commits

    def pending(self) -> list[str]:
        """What keeps the bus from being idle: per group and topic, the messages not yet
        handled; and the delayed messages not yet due. Empty when idle."""
        found = []
        for name, group in sorted(self.broker.groups.items()):
            lag: dict[str, int] = {}
            for tp in _partitions_of(group.committed, group.owners):
                end = self.broker.end_offset(tp)
                behind = end - group.committed.get(tp, 0)
                if behind > 0:
                    lag[tp.topic] = lag.get(tp.topic, 0) + behind
            found += [f"group {name} has {n} unhandled on {t}" for t, n in sorted(lag.items())]
        if self.broker.scheduled:
            found.append(f"{self.broker.scheduled} delayed message(s) not yet due")
        found += self._parked()
        return found

    def _parked(self) -> list[str]:
        """Messages parked behind a non-blocking retry (a dead head is not pending: it
        waits for someone to re-drive or purge it, as a dead letter does)."""
        found = []
        for name, parts in sorted(self.broker.topics.items()):
            if name.startswith(PARK_PREFIX):
                index = ParkIndex()
                for record in parts[0] if parts else ():
                    index.apply(record)
                waiting = sum(len(lane) for lanes in index.lanes.values()
                              for lane in lanes.values() if lane and not lane[0].dead)
                if waiting:
                    found.append(f"group {name[len(PARK_PREFIX):]} has {waiting} parked "
                                 "message(s) waiting for a retry")
        return found

    # -- what was published ----------------------------------------------------------

    def topics(self) -> list[str]:
        """Every topic with at least one message, but tidings' own: the reply topic of
        requests, the apps' self-descriptions (``tidings.apps``) and park logs."""
        return sorted(name for name, parts in self.broker.topics.items()
                      if name not in (REPLIES_TOPIC, APPS_TOPIC) and any(parts)
                      and not name.startswith(PARK_PREFIX))

    def published(self, topic: str) -> list[Message]:
        """Every message on ``topic``, as envelopes, in publish order (partition by
        partition for messages of different keys)."""
        return [Message.from_record(r, 1) for r in self._records(topic)]

    def _records(self, topic: str) -> list[Record]:
        parts = self.broker.topics.get(topic, [])
        return sorted((r for log in parts for r in log),
                      key=lambda r: (r.timestamp, r.partition, r.offset))

    def payloads(self, topic: str) -> list[Any]:
        """The payloads of :meth:`published`, decoded from JSON (raw bytes otherwise)."""
        return [_decode(m.body) for m in self.published(topic)]

    def dead_letters(self, topic: str) -> list[DeadLetter]:
        """Every message dead-lettered from ``topic`` (resolved ones too), oldest first."""
        return [DeadLetter.from_record(r) for r in self._records(f"{topic}.dlq")
                if Headers.DLQ_TOPIC in r.headers]

    # -- assertions ----------------------------------------------------------------

    def assert_published(self, topic: str, payload: Any = None, *, key: str | None = None,
                         count: int | None = None) -> list[Message]:
        """Assert ``topic`` holds a message matching ``payload`` (a dict matches a message
        whose payload contains its items; anything else must be equal) and ``key``;
        exactly ``count`` of them if given. Returns the matching messages."""
        every = self.published(topic)
        found = [m for m in every if (key is None or m.key == key)
                 and (payload is None or _matches(_decode(m.body), payload))]
        wanted = f"{count} message(s)" if count is not None else "a message"
        if (count is None and not found) or (count is not None and len(found) != count):
            shown = [(m.key, _decode(m.body)) for m in every[-10:]]
            raise AssertionError(
                f"expected {wanted} on {topic!r} matching payload={payload!r} key={key!r}; "
                f"found {len(found)} of {len(every)}; last ones (key, payload): {shown}")
        return found

    def assert_not_published(self, topic: str) -> None:
        """Assert nothing was published to ``topic``."""
        every = self.published(topic)
        if every:
            raise AssertionError(f"expected nothing on {topic!r}, found {len(every)}: "
                                 f"{[_decode(m.body) for m in every[:10]]}")


def _move(app: App, url: str) -> None:
    """Point a not yet started ``app`` at the broker at ``url``."""
    if app.running:
        raise ConfigurationError(f"app {app.name!r} is running: give TestBus apps not started")
    transport = load_transport(url)
    app._transport = transport
    app._replies = ReplyListener(transport, app.instance_id,
                                 lambda outs: app._emit(outs, "request"))
    app.broker = url


async def _stop_all(apps: tuple[App, ...] | list[App]) -> None:
    for app in reversed(apps):
        await app.stop()


def _partitions_of(committed: Mapping[TopicPartition, int],
                   owners: Mapping[TopicPartition, str]) -> set[TopicPartition]:
    return set(committed) | set(owners)


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body


def _matches(actual: Any, expected: Any) -> bool:
    if isinstance(expected, dict) and isinstance(actual, dict):
        return all(k in actual and _matches(actual[k], v) for k, v in expected.items())
    return bool(actual == expected)

