"""mqtt:// through a broker outage: mosquitto SIGKILLed mid-run and restarted on the
same port with its persistence file, under a steady publisher and a consumer group.

What must hold: the connections come back by themselves; a publish waits through the
outage (up to ``publish_timeout``) or raises ``BrokerUnavailableError``; no publish
that returned is lost (duplicates allowed); ``App.health()`` says not ready during the
outage and ready after; the outage is logged as one line when it starts and one when
it ends, per transport, with no password in them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, cast

import pytest

from mqtt_broker import free_port, running_mosquitto
from tidings import App, BrokerUnavailableError
from tidings.backends.mqtt import MqttTransport

pytestmark = pytest.mark.failover

PASSWORD = "s3cr3t-Pa55"
#: mosquitto saves its state after every change (not every 30 min): what it
#: acknowledged before the SIGKILL is in the file it restarts from.
DURABLE = "autosave_interval 1\nautosave_on_changes true"


class Broker:
    """One mosquitto on a fixed port and data directory, killed and started at will."""

    def __init__(self, data: Path) -> None:
        self.port, self.data = free_port(), data
        self.url = ""
        self._stack = ExitStack()
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        self.url = self._stack.enter_context(running_mosquitto(
            users={"alice": PASSWORD}, port=self.port, data=self.data, extra=DURABLE,
            started=self._started))
        return self.url

    def _started(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process

    def kill(self) -> None:
        assert self._process is not None
        self._process.kill()  # SIGKILL: no goodbye, no last save
        self._process.wait()
        self._stack.close()

    def stop(self) -> None:
        self._stack.close()


@pytest.fixture
def broker() -> Iterator[Broker]:
    # Not under pytest's tmp_path: mosquitto, dropped to its own user, cannot reach it.
    data = Path(tempfile.mkdtemp(prefix="tidings-mosquitto-data-"))
    data.chmod(0o777)
    broker = Broker(data)
    try:
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(data, ignore_errors=True)


async def eventually(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def test_a_broker_sigkill_and_restart_loses_no_published_message(
        broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tidings.mqtt")
    topic = f"outage-{uuid.uuid4().hex[:8]}"
    url = broker.start()
    published: list[tuple[int, float]] = []  # (n, when its publish returned)
    handled: list[int] = []
    health: list[tuple[float, bool, bool]] = []
    unavailable = 0

    consumer = App("outage-consumer", broker=f"{url}?member=c1&publish_timeout=20")
    producer = App("outage-producer", broker=f"{url}?publish_timeout=20")

    @consumer.subscriber(topic, group="g")
    async def handle(event: dict[str, int]) -> None:
        handled.append(event["n"])

    async def publish_steadily(stop: asyncio.Event) -> None:
        nonlocal unavailable
        n = 0
        while not stop.is_set():
            try:
                await producer.publish(topic, {"n": n})
            except BrokerUnavailableError:
                unavailable += 1
                continue  # the same n again: a duplicate at worst
            published.append((n, time.monotonic()))
            n += 1
            await asyncio.sleep(0.005)

    async def watch_health(stop: asyncio.Event) -> None:
        while not stop.is_set():
            found = await consumer.health(timeout=1.0)
            health.append((time.monotonic(), found.ready, found.connected))
            await asyncio.sleep(0.05)

    async def main() -> dict[str, Any]:
        stop = asyncio.Event()
        async with consumer, producer:
            tasks = [asyncio.create_task(publish_steadily(stop)),
                     asyncio.create_task(watch_health(stop))]
            await eventually(lambda: len(handled) >= 200, 15, "200 handled before the kill")
            broker.kill()
            killed = time.monotonic()
            await eventually(lambda: health and not health[-1][1], 10,
                             "health to say not ready")
            await asyncio.sleep(1.0)
            broker.start()
            restarted = time.monotonic()
            before = len(published)
            await eventually(lambda: len(published) >= before + 300, 20,
                             "300 more publishes after the restart")
            await eventually(lambda: health[-1][1] and health[-1][2], 10,
                             "health to say ready again")
            stop.set()
            await asyncio.gather(*tasks)
            sent = {n for n, _ in published}
            await eventually(lambda: sent <= set(handled), 20,
                             "every published message handled")
        returns = [when for _, when in published]
        stall = max(b - a for a, b in itertools.pairwise(returns))
        return {"published": len(sent), "handled": len(set(handled)),
                "duplicates": len(handled) - len(set(handled)),
                "lost": len(sent - set(handled)), "unavailable_errors": unavailable,
                "outage_s": round(restarted - killed, 2), "stall_s": round(stall, 2),
                "publish_rate": round(len(returns) / (returns[-1] - returns[0])),
                "not_ready_probes": sum(1 for _, ready, _ in health if not ready)}

    figures = asyncio.run(main())
    print("mqtt outage:", json.dumps(figures))
    assert figures["lost"] == 0, figures
    assert figures["not_ready_probes"] > 0, figures
    assert figures["stall_s"] < 15, figures
    lines = [r for r in caplog.records if r.name == "tidings.mqtt"]
    for line in lines:
        print(f"{line.levelname} {line.name}: {line.getMessage()}")
    assert not [r for r in lines if PASSWORD in r.getMessage()]
    starts = [r for r in lines if "broker unreachable" in r.getMessage()]
    ends = [r for r in lines if "reachable again" in r.getMessage()]
    # One line each way per transport (the consumer's and the producer's): none per retry.
    assert (len(starts), len(ends), len(lines)) == (2, 2, 4), [r.getMessage() for r in lines]
    assert "alice:***@" in starts[0].getMessage()


def test_a_publish_during_an_outage_raises_broker_unavailable_after_publish_timeout(
        broker: Broker) -> None:
    url = broker.start()

    async def main() -> None:
        async with App("outage-short", broker=f"{url}?publish_timeout=1") as app:
            await app.publish("outage-short", {"n": 0})
            broker.kill()
            started = time.monotonic()
            with pytest.raises(BrokerUnavailableError) as info:
                await app.publish("outage-short", {"n": 1})
            took = time.monotonic() - started
            assert 0.9 < took < 5, took
            assert "publish_timeout" in str(info.value) and PASSWORD not in str(info.value)
            found = await app.health(timeout=1.0)
            assert not found.ready and not found.connected, found
            assert any("unreachable" in reason for reason in found.reasons), found

    asyncio.run(main())


def test_after_a_restart_a_topic_nobody_ever_subscribed_to_is_not_held(
        broker: Broker) -> None:
    """The restart grace holds only publishes to topics that reached a subscriber
    before: a topic with none returns at once after a reconnect, as before it."""
    url = broker.start()

    async def main() -> None:
        async with App("outage-nobody", broker=f"{url}?restart_grace=30") as app:
            await app.publish("nobody-listens", {"n": 0})
            broker.kill()
            broker.start()
            outage = cast(MqttTransport, app.transport).outage
            await eventually(lambda: outage.count == 1 and not outage.down, 10,
                             "the publisher to reconnect")
            started = time.monotonic()
            await app.publish("nobody-listens", {"n": 1})
            assert time.monotonic() - started < 5

    asyncio.run(main())
