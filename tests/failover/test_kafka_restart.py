"""Failover: the Kafka broker is SIGKILLed mid-run and restarted on the same port.

A steady publisher and a consumer-group member run as separate processes (this module,
run as a script, is both: ``python test_kafka_restart.py publish|consume URL TOPIC``).
After tansu's restart they must recover by themselves: the publisher's producer gets a
new idempotence session (tansu forgot the old one: UNKNOWN_PRODUCER_ID), the member
rejoins, and every record whose publish returned after the restart is handled. tansu
runs on memory storage, so records it acknowledged before it died are gone with it
(the broker's loss, counted apart: the test checks the client's recovery, not them).

Each test prints what it measured (stall, counts published, handled, duplicated, lost).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))  # tests/: kafka_broker, processes

from kafka_broker import RestartableTansu, restartable_tansu  # noqa: E402
from tidings import App  # noqa: E402
from tidings._errors import BrokerUnavailableError  # noqa: E402

pytestmark = [pytest.mark.failover, pytest.mark.timeout(90)]


# -- the child processes ---------------------------------------------------------------


def _say(**data: Any) -> None:
    print(json.dumps(data), flush=True)


async def _publish(url: str, topic: str) -> None:
    """Publish ``{"n": n}`` every ~10 ms, forever; say how each publish ended."""
    async with App(f"pub-{uuid.uuid4().hex[:6]}", broker=url) as app:
        n = 0
        while True:
            started = time.monotonic()
            try:
                await app.publish(topic, {"n": n}, key=str(n % 8))
            except Exception as exc:
                _say(failed=n, error=type(exc).__name__, took=time.monotonic() - started)
            else:
                _say(ok=n, at=time.time(), took=time.monotonic() - started)
            n += 1
            await asyncio.sleep(0.01)


async def _consume(url: str, topic: str) -> None:
    """Handle ``topic`` in a group; say each record, and the app's health twice a second."""
    app = App(f"con-{uuid.uuid4().hex[:6]}", broker=url)

    @app.subscriber(topic, group=f"{topic}-group")
    async def handle(event: dict[str, int]) -> None:
        _say(got=event["n"])

    async with app:
        while True:
            health = await app.health(timeout=1.0)
            _say(health=health.ready, connected=health.connected, at=time.time())
            await asyncio.sleep(0.5)


async def _transform(url: str, topic: str) -> None:
    """An exactly-once member: each ``{"n": n}`` of ``topic`` becomes one on
    ``<topic>-out``, appended in the transaction that commits its offset."""
    app = App(f"eos-{uuid.uuid4().hex[:6]}", broker=url)

    @app.subscriber(topic, group=f"{topic}-eos", exactly_once=True)
    async def transform(event: dict[str, int]) -> None:
        await app.publish(f"{topic}-out", event, key=str(event["n"] % 8))

    async with app:
        while True:
            health = await app.health(timeout=1.0)
            _say(health=health.ready, connected=health.connected, at=time.time())
            await asyncio.sleep(0.5)


# -- the test side -----------------------------------------------------------------------


@dataclass
class Child:
    """A child process and what it said so far (read by a thread-free poll)."""

    process: subprocess.Popen[str]
    lines: list[dict[str, Any]] = field(default_factory=list)
    stderr: IO[str] | None = None

    def read(self) -> None:
        """Take in the lines printed since the last call (non-blocking)."""
        assert self.process.stdout is not None
        import os
        import select

        fd = self.process.stdout.fileno()
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            self._buffer = getattr(self, "_buffer", "") + chunk.decode()
            *complete, self._buffer = self._buffer.split("\n")
            self.lines.extend(json.loads(line) for line in complete if line.startswith("{"))

    def values(self, name: str) -> list[Any]:
        return [line[name] for line in self.lines if name in line]


@pytest.fixture
def children(tmp_path: Path) -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.process.kill()
        child.process.wait()
        if child.process.stdout is not None:
            child.process.stdout.close()
        if child.stderr is not None:
            child.stderr.close()


def _spawn(children: list[Child], tmp_path: Path, role: str, url: str, topic: str) -> Child:
    log = open(tmp_path / f"{role}.log", "w+")  # noqa: SIM115  # closed with the test's tmp
    process = subprocess.Popen(
        [sys.executable, str(HERE), role, url, topic],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )
    child = Child(process, stderr=log)
    children.append(child)
    return child


def _wait_for(condition: Any, timeout: float, what: str, *children: Child) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            child.read()
            if child.process.poll() is not None:
                raise AssertionError(f"a child exited ({child.process.returncode}) "
                                     f"while waiting for {what}")
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def _log_of(child: Child) -> str:
    assert child.stderr is not None
    child.stderr.seek(0)
    return child.stderr.read()


def _flowing(children: list[Child], tmp_path: Path, url: str,
             prefix: str) -> tuple[Child, Child]:
    """A publisher and a group member on a new topic, once the member handled 50."""
    topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    publisher = _spawn(children, tmp_path, "publish", url, topic)
    consumer = _spawn(children, tmp_path, "consume", url, topic)
    _wait_for(lambda: len(consumer.values("got")) >= 50, 40, "the first 50 handled",
              publisher, consumer)
    return publisher, consumer


def _wait_for_outage(consumer: Child, since: float, publisher: Child) -> None:
    """Until the member's health, checked after ``since``, reports no connection."""
    _wait_for(lambda: any(line.get("connected") is False and line["at"] > since
                          for line in consumer.lines),
              15, "the consumer's health reporting the outage", publisher, consumer)


def test_publisher_and_group_member_recover_from_a_broker_restart(
        children: list[Child], tmp_path: Path) -> None:
    with restartable_tansu(publish_timeout="20") as broker:
        publisher, consumer = _flowing(children, tmp_path, broker.url, "failover")
        killed = time.time()
        broker.kill()
        _wait_for_outage(consumer, killed, publisher)
        time.sleep(max(0.0, killed + 3 - time.time()))  # down for 3 s at least
        broker.start()
        restarted = time.time()

        def caught_up() -> bool:
            after = [line["ok"] for line in publisher.lines
                     if "ok" in line and line["at"] > restarted]
            return len(after) >= 200 and set(after) <= set(consumer.values("got"))

        _wait_for(caught_up, 45, "200 records published after the restart, all handled",
                  publisher, consumer)

        def recovered() -> bool:  # the last three checks, all after the restart, passed
            checks = [line for line in consumer.lines if "health" in line][-3:]
            return len(checks) == 3 and all(
                line["health"] and line["connected"] and line["at"] > restarted + 1
                for line in checks)

        _wait_for(recovered, 20, "the consumer's health reporting the recovery",
                  publisher, consumer)
        for child in (publisher, consumer):  # before the broker stops for good
            child.process.kill()
            child.process.wait()

    acked = {line["ok"]: line["at"] for line in publisher.lines if "ok" in line}
    failed = [line for line in publisher.lines if "failed" in line]
    got = consumer.values("got")
    handled = set(got)
    after_restart = {n for n, at in acked.items() if at > restarted}
    lost = sorted(after_restart - handled)
    broker_lost = sorted(n for n, at in acked.items() if at <= killed and n not in handled)
    times = sorted(acked.values())
    stall = max(b - a for a, b in itertools.pairwise(times))
    print(f"\nkafka broker restart (down {restarted - killed:.1f} s): publisher stalled "
          f"{stall:.1f} s; published {len(acked)}, failed {len(failed)}, handled "
          f"{len(handled)}, duplicates {len(got) - len(handled)}, lost after the restart "
          f"{len(lost)}, lost with the broker's memory {len(broker_lost)}")
    assert lost == [], f"records published after the restart never handled: {lost[:20]}"
    assert all(line["error"] == "BrokerUnavailableError" for line in failed), failed[:5]
    assert stall < 20, f"the publisher stalled {stall:.1f} s"
    for child in (publisher, consumer):
        log = _log_of(child)
        # One line when the outage starts, one when it ends, not a line per retry.
        assert log.count("is unreachable") == 1, log[-3000:]
        assert log.count("is reachable again") == 1, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
        # Not a line per retry: the outage, the new producer session, each consumer's
        # expired session and a refused commit, and nothing that repeats.
        warnings = [line for line in log.splitlines()
                    if " WARNING " in line or " ERROR " in line or " CRITICAL " in line]
        assert len(warnings) <= 8, "\n".join(warnings)


def test_an_exactly_once_member_transforms_again_after_the_broker_hung(
        children: list[Child], tmp_path: Path) -> None:
    """The broker hangs (SIGSTOP) past the sessions: the exactly-once member's commits
    fail meanwhile, and it must go on transforming once the broker answers again; every
    acknowledged record, before, during and after, comes out of the transform."""
    with restartable_tansu(publish_timeout="20") as broker:
        topic = f"eos-{uuid.uuid4().hex[:8]}"
        publisher = _spawn(children, tmp_path, "publish", broker.url, topic)
        member = _spawn(children, tmp_path, "transform", broker.url, topic)
        reader = _spawn(children, tmp_path, "consume", broker.url, f"{topic}-out")
        everyone = (publisher, member, reader)
        _wait_for(lambda: len(reader.values("got")) >= 50, 60, "the first 50 transformed",
                  *everyone)
        frozen = time.time()
        broker.freeze()
        _wait_for_outage(reader, frozen, publisher)
        time.sleep(max(0.0, frozen + 6 - time.time()))  # past the sessions
        broker.thaw()
        thawed = time.time()

        def caught_up() -> bool:  # the transform holds records up to a commit (100 ms)
            settled = time.time() - 2
            acked = [line["ok"] for line in publisher.lines
                     if "ok" in line and line["at"] < settled]
            after = [line for line in publisher.lines
                     if "ok" in line and thawed < line["at"] < settled]
            return len(after) >= 200 and set(acked) <= set(reader.values("got"))

        _wait_for(caught_up, 60, "every acknowledged record transformed, 200 after the thaw",
                  *everyone)
        for child in everyone:
            child.process.kill()
            child.process.wait()
    log = _log_of(member)
    got = reader.values("got")
    print(f"\nexactly-once member, broker frozen {thawed - frozen:.1f} s: transformed "
          f"{len(set(got))}, duplicates {len(got) - len(set(got))} (tansu shows aborted "
          f"transactions)")
    assert "Traceback" not in log, log[-3000:]


def test_nothing_acknowledged_is_lost_while_the_broker_is_frozen(
        children: list[Child], tmp_path: Path) -> None:
    """SIGSTOP (a hung broker, a network partition) keeps the broker's data: every
    record whose publish returned, before, during and after, is handled; the member,
    whose session expired meanwhile, resumes from its group's committed offsets."""
    with restartable_tansu(publish_timeout="20") as broker:
        publisher, consumer = _flowing(children, tmp_path, broker.url, "frozen")
        frozen = time.time()
        broker.freeze()
        _wait_for_outage(consumer, frozen, publisher)
        time.sleep(max(0.0, frozen + 6 - time.time()))  # past the member's session
        broker.thaw()
        thawed = time.time()

        def caught_up() -> bool:
            acked = publisher.values("ok")
            after = [line for line in publisher.lines if "ok" in line and line["at"] > thawed]
            return len(after) >= 200 and set(acked) <= set(consumer.values("got"))

        _wait_for(caught_up, 45, "every acknowledged record handled, 200 after the thaw",
                  publisher, consumer)
        for child in (publisher, consumer):
            child.process.kill()
            child.process.wait()

    acked = {line["ok"]: line["at"] for line in publisher.lines if "ok" in line}
    failed = [line for line in publisher.lines if "failed" in line]
    got = consumer.values("got")
    times = sorted(acked.values())
    stall = max(b - a for a, b in itertools.pairwise(times))
    print(f"\nkafka broker frozen {thawed - frozen:.1f} s: publisher stalled {stall:.1f} s; "
          f"published {len(acked)}, failed {len(failed)}, handled {len(set(got))}, "
          f"duplicates {len(got) - len(set(got))}, lost {len(set(acked) - set(got))}")
    assert set(acked) <= set(got)
    assert all(line["error"] == "BrokerUnavailableError" for line in failed), failed[:5]


def _restart_in(broker: RestartableTansu, delay: float) -> asyncio.Task[None]:
    async def later() -> None:
        await asyncio.sleep(delay)
        await asyncio.to_thread(broker.start)

    return asyncio.get_running_loop().create_task(later())


def test_a_publish_during_a_short_outage_returns_once_the_broker_is_back() -> None:
    async def main() -> tuple[float, list[int]]:
        with restartable_tansu(publish_timeout="20") as broker:
            topic = f"outage-{uuid.uuid4().hex[:8]}"
            async with App("short-outage", broker=broker.url) as app:
                await app.publish(topic, {"n": 0}, key="k")
                broker.kill()
                await asyncio.sleep(0.5)
                restarting = _restart_in(broker, 2.0)
                started = time.monotonic()
                await app.publish(topic, {"n": 1}, key="k")  # waits in the old session
                took = time.monotonic() - started
                await restarting
                await app.publish(topic, {"n": 2}, key="k")  # and the next one too
                transport = app.transport
                count = await transport.ensure_topic(topic)
                found = [json.loads(r.value)["n"] for p in range(count)
                         for r in await transport.read(topic, p, 0, 10)]
        return took, found

    took, found = asyncio.run(main())
    print(f"\na publish made while the broker was down returned after {took:.1f} s")
    assert 1.5 < took < 20
    assert sorted(found) == [1, 2]  # 0 was lost with the broker's memory


def test_a_publish_during_a_long_outage_raises_broker_unavailable_after_publish_timeout(
        ) -> None:
    async def main() -> float:
        with restartable_tansu(publish_timeout="3") as broker:
            topic = f"down-{uuid.uuid4().hex[:8]}"
            async with App("long-outage", broker=broker.url) as app:
                await app.publish(topic, {"n": 0})
                broker.kill()
                started = time.monotonic()
                with pytest.raises(BrokerUnavailableError, match="publish_timeout"):
                    await app.publish(topic, {"n": 1})
                took = time.monotonic() - started
                broker.start()  # back, so that the app stops quickly
        return took

    took = asyncio.run(main())
    print(f"\na publish during an outage raised BrokerUnavailableError after {took:.1f} s")
    assert 2.5 < took < 6


def test_publish_timeout_sets_the_delivery_timeout_and_keeps_its_former_name() -> None:
    from tidings.backends.kafka._settings import parse_url

    assert parse_url("kafka://127.0.0.1:9092").publish_timeout == 30
    for option in ("publish_timeout", "delivery_timeout"):
        settings = parse_url(f"kafka://127.0.0.1:9092?{option}=7")
        assert settings.publish_timeout == 7
        assert settings.producer_config()["message.timeout.ms"] == 7000
    from tidings.backends.kafka import KafkaSettings

    assert KafkaSettings(bootstrap_servers="h:1", delivery_timeout=5).publish_timeout == 5


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    role, url, topic = sys.argv[1:4]
    asyncio.run({"publish": _publish, "consume": _consume, "transform": _transform}[role](
        url, topic))
