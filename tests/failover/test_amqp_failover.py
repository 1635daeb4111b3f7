"""Losing a RabbitMQ node: a single node SIGKILLed and started again, and the node that
leads the busiest stream of a 3-node cluster SIGKILLed mid-run. Every publish that
returned must be handled at least once, in order per key, and the flow must resume;
each test prints how long publishing and consuming stalled."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from rabbitmq_cluster import Node, amqp_url, running_cluster
from tidings import App, BrokerUnavailableError, ConfigurationError
from tidings.backends.amqp import from_url

pytestmark = pytest.mark.failover

HERE = Path(__file__).resolve().parent
KEYS = 8


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


class Publisher:
    """Publishes ``{"n": n, "k": key}`` steadily (one awaited publish at a time), and
    notes when each publish returned."""

    def __init__(self, app: App, topic: str) -> None:
        self.app, self.topic = app, topic
        self.acked: list[int] = []
        self.returned_at: list[float] = []
        self.errors: list[BaseException] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                await self.app.publish(self.topic, {"n": n, "k": n % KEYS}, key=str(n % KEYS))
            except BrokerUnavailableError as exc:
                self.errors.append(exc)
                continue
            self.acked.append(n)
            self.returned_at.append(time.monotonic())
            n += 1
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    def longest_gap(self, after: float) -> float:
        """The longest time between two returned publishes after ``after``."""
        times = [t for t in self.returned_at if t >= after]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def _check(acked: Sequence[int], handled: Sequence[tuple[int, int]]) -> dict[str, int]:
    """Every acked publish handled, in order per key (first deliveries); the counts."""
    seen: set[int] = set()
    per_key: dict[int, list[int]] = defaultdict(list)
    duplicates = 0
    for n, key in handled:
        if n in seen:
            duplicates += 1
            continue
        seen.add(n)
        per_key[key].append(n)
    lost = sorted(set(acked) - seen)
    assert not lost, f"{len(lost)} acknowledged publishes never handled: {lost[:20]}"
    for key, ns in per_key.items():
        assert ns == sorted(ns), f"key {key} handled out of order"
    return {"published": len(acked), "handled": len(handled), "duplicates": duplicates,
            "lost": len(lost)}


def _consuming_gap(times: Sequence[float], after: float) -> float:
    later = sorted(t for t in times if t >= after)
    return max((b - a for a, b in itertools.pairwise(later)), default=0.0)


def _secret_user(node: Node) -> tuple[str, str]:
    user, password = "tidings", f"pw-{uuid.uuid4().hex[:10]}"
    node.ctl("add_user", user, password)
    node.ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
    return user, password


# -- one node, killed and started again ----------------------------------------------


def test_a_node_restart_stalls_publishing_and_consuming_then_both_resume(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with running_cluster(1) as (node,):
        user, password = _secret_user(node)
        url = f"amqp://{user}:{password}@{node.address}/"
        stats = asyncio.run(_single_node_outage(node, url))
    print(f"\nsingle node stopped and restarted: {stats}")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert password not in text
    # One line when the outage starts, one when it ends, per connection (two apps).
    lost = [r for r in caplog.records if r.getMessage().startswith("lost the connection")]
    back = [r for r in caplog.records
            if r.getMessage().startswith("connected to RabbitMQ again")]
    assert len(lost) == 2 and len(back) == 2, text
    amqp_lines = [r for r in caplog.records if r.name == "tidings.amqp"]
    assert len(amqp_lines) <= 6, text  # no line per retry
    consumer_lines = [r for r in caplog.records if r.name == "tidings.consumer"]
    assert not consumer_lines, text  # fetches and commits wait for the link, silently


async def _single_node_outage(node: Node, url: str) -> dict[str, object]:
    topic, group = f"outage-{uuid.uuid4().hex[:8]}", f"svc-{uuid.uuid4().hex[:6]}"
    producer = App("producer", broker=f"{url}?publish_timeout=90")
    # connect_timeout well below the outage: a fetch must wait for the link, not fail.
    consumer = App(group, broker=f"{url}?connect_timeout=1")
    handled: list[tuple[int, int]] = []
    handled_at: list[float] = []

    @consumer.subscriber(topic, concurrency=4)
    async def handle(payload: dict[str, int]) -> None:
        handled.append((payload["n"], payload["k"]))
        handled_at.append(time.monotonic())

    async with producer, consumer:
        publisher = Publisher(producer, topic)
        publisher.start()
        await _until(lambda: len(handled) >= 100, 30, "the flow to start")
        killed = time.monotonic()
        # SIGTERM: a single RabbitMQ 3.10 node SIGKILLed and started again keeps its
        # streams down (leader none) for minutes; the cluster test SIGKILLs.
        await asyncio.to_thread(node.stop)
        link = producer._transport.link  # type: ignore[attr-defined]
        await _until(lambda: not link.up, 10, "the outage to be seen")
        health = await consumer.health()
        assert not health.connected and health.reasons, health
        assert any("unreachable" in r for r in health.reasons), health
        before = len(publisher.acked)
        await asyncio.sleep(1.0)
        assert len(publisher.acked) <= before + 1, "publishes returned with the node down"
        await asyncio.to_thread(node.start)
        await asyncio.to_thread(node.wait)
        restarted = time.monotonic()
        await _until(lambda: len(publisher.acked) >= before + 100, 60, "publishing to resume")
        await publisher.stop()
        acked = list(publisher.acked)
        await _until(lambda: {n for n, _ in handled} >= set(acked), 60,
                     "every acknowledged publish to be handled")
        health = await consumer.health()
        assert health.connected, health
    assert not publisher.errors
    stats: dict[str, object] = dict(_check(acked, handled))
    stats["node down (s)"] = round(restarted - killed, 1)
    stats["publish stall (s)"] = round(publisher.longest_gap(killed - 0.1), 1)
    stats["consume stall (s)"] = round(_consuming_gap(handled_at, killed - 0.1), 1)
    return stats


def test_a_publish_during_an_outage_raises_after_publish_timeout() -> None:
    with running_cluster(1) as (node,):
        url = amqp_url([node], "publish_timeout=1.5")

        async def main() -> None:
            app = App("producer", broker=url)
            async with app:
                await app.publish("timeouts", {"n": 0})
                await asyncio.to_thread(node.kill)
                began = time.monotonic()
                with pytest.raises(BrokerUnavailableError, match=r"publish_timeout=1\.5"):
                    await app.publish("timeouts", {"n": 1})
                assert 1.4 <= time.monotonic() - began < 5

        asyncio.run(main())


# -- bad input -----------------------------------------------------------------------


def test_every_node_dead_at_start_names_the_addresses_tried() -> None:
    from kafka_broker import free_port

    ports = [free_port() for _ in range(3)]
    url = f"amqp://u:hunter2@{','.join(f'127.0.0.1:{p}' for p in ports)}/?connect_timeout=2"
    with pytest.raises(BrokerUnavailableError) as caught:
        asyncio.run(from_url(url).start())
    message = str(caught.value)
    assert all(f"127.0.0.1:{p}" in message for p in ports), message
    assert "hunter2" not in message


def test_a_url_whose_first_nodes_are_dead_connects_to_the_live_one(amqp_url: str) -> None:
    """Issue 18, bad input: a cluster URL with dead nodes among several connects to the
    live one, and the app publishes and handles through it."""
    from kafka_broker import free_port

    live = from_url(amqp_url).settings
    vhost = amqp_url.rsplit("/", 1)[1].split("?")[0]
    dead = [free_port() for _ in range(2)]
    url = (f"amqp://guest:guest@127.0.0.1:{dead[0]},127.0.0.1:{dead[1]},"
           f"{live.host}:{live.port}/{vhost}?connect_timeout=5")
    topic = f"live-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        app = App("survivor", broker=url)
        seen: list[int] = []

        @app.subscriber(topic, group="readers")
        async def handle(n: int) -> None:
            seen.append(n)

        async with app:
            for n in range(5):
                await app.publish(topic, n)
            await _until(lambda: len(seen) == 5, 30, "five handled")
        assert seen == list(range(5))

    asyncio.run(main())


def test_replicated_needs_the_nodes_of_a_cluster() -> None:
    with pytest.raises(ConfigurationError, match="at least three nodes") as caught:
        from_url("amqp://u:hunter2@rabbit-1:5672/?replicated=true")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigurationError, match="queue_type=classic"):
        from_url("amqp://h1,h2,h3/?replicated=true&queue_type=classic")
    settings = from_url("amqp://h1,h2:5673,[::1]:5674/v?replicated=true").settings
    assert settings.nodes() == (("h1", 5672), ("h2", 5673), ("::1", 5674))
    assert settings.queue_type == "quorum"
    with pytest.raises(ConfigurationError, match="bad host"):
        from_url("amqp://h1,h2:x/")


def test_replicated_refuses_nodes_that_are_not_one_cluster(amqp_url: str) -> None:
    from kafka_broker import free_port

    with running_cluster(1) as (other,):
        first = from_url(amqp_url).settings
        dead = free_port()
        url = (f"amqp://guest:guest@{first.host}:{first.port},{other.address},"
               f"127.0.0.1:{dead}/?replicated=true&connect_timeout=2")
        with pytest.raises(ConfigurationError, match=f"{other.address}.*not in the cluster"):
            asyncio.run(from_url(url).start())


# -- a 3-node cluster ------------------------------------------------------------------


class Member:
    """A group member in its own process; its handled records, as they come."""

    def __init__(self, url: str, group: str, topic: str) -> None:
        self.handled: list[tuple[int, int]] = []
        self.times: list[float] = []
        self.ready = threading.Event()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "amqp_member.py"), url, group, topic],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("H "):
                _, n, k = line.split()
                self.handled.append((int(n), int(k)))
                self.times.append(time.monotonic())
            elif line.strip() == "ready":
                self.ready.set()
            else:
                self.output.append(line)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self._reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def _leaders(node: Node, prefix: str) -> dict[str, str]:
    """Stream name -> the node that leads it (``rabbitmqctl list_queues``)."""
    out = node.ctl("list_queues", "--silent", "name", "leader")
    pairs = (line.split("\t") for line in out.splitlines() if line.startswith(prefix))
    return {name: leader.strip() for name, leader in pairs}


@pytest.mark.timeout(240)
def test_a_cluster_survives_the_loss_of_the_node_leading_the_busiest_stream() -> None:
    with running_cluster(3) as nodes:
        stats = asyncio.run(_cluster_failover(nodes))
    print(f"\n3-node cluster, leader of the busiest stream SIGKILLed: {stats}")


async def _cluster_failover(nodes: Sequence[Node]) -> dict[str, object]:
    topic, group = f"ha-{uuid.uuid4().hex[:8]}", f"svc-{uuid.uuid4().hex[:6]}"
    url = amqp_url(nodes, "replicated=true&session_timeout=3&partitions=4")
    producer = App("producer", broker=f"{url}&publish_timeout=60")
    async with producer:
        await producer.publish(topic, {"n": -1, "k": 0}, key="0")  # creates the topic
        # The producer is connected to node a, which leads the streams it declared; the
        # members to node b: the victim (a) is the producer's own node and, for the
        # members, a node elsewhere that led the streams they read.
        rotated = amqp_url([*nodes[1:], nodes[0]], "replicated=true&session_timeout=3")
        members = [Member(rotated, group, topic) for _ in range(2)]
        try:
            for member in members:
                await asyncio.to_thread(member.ready.wait, 60)
            publisher = Publisher(producer, topic)
            publisher.start()
            handled_count = lambda: sum(len(m.handled) for m in members)  # noqa: E731
            await _until(lambda: handled_count() >= 200, 60, "the flow to start")
            # The busiest stream is the one of key 0's partition... every key is as busy:
            # kill the node leading the stream of partition 0.
            leaders = await asyncio.to_thread(_leaders, nodes[0], f"{topic}.")
            victim = next(n for n in nodes if n.name == leaders[f"{topic}.0"])
            killed = time.monotonic()
            await asyncio.to_thread(victim.kill)
            before = len(publisher.acked)
            await _until(lambda: len(publisher.acked) >= before + 300, 90,
                         "publishing to resume")
            await publisher.stop()
            acked = list(publisher.acked)
            await _until(lambda: {n for m in members for n, _ in m.handled} >= set(acked),
                         90, "every acknowledged publish to be handled")
            assert all(m.process.poll() is None for m in members), "a member died"
        finally:
            for member in members:
                member.stop()
    # In the order they were handled (a key may move from one member to the other).
    timed = sorted((t, h) for m in members for t, h in zip(m.times, m.handled, strict=False))
    handled = [h for _, h in timed]
    stats: dict[str, object] = dict(_check(acked, [h for h in handled if h[0] >= 0]))
    stats["victim"] = victim.name
    stats["publish stall (s)"] = round(publisher.longest_gap(killed - 0.1), 1)
    stats["consume stall (s)"] = round(
        _consuming_gap([t for m in members for t in m.times], killed - 0.1), 1)
    stats["per member"] = [len(m.handled) for m in members]
    stats["consumers cancelled by the broker"] = sum(
        "cancelled by the broker" in line for m in members for line in m.output)
    with contextlib.suppress(Exception):
        stats["publish errors"] = len(publisher.errors)
    return stats
