"""The mqtt:// backend against a private mosquitto: delivery, groups, crashes, dead
letters, request/reply."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt_broker import free_port, running_mosquitto
from tidings import App, Message, RetryPolicy
from tidings._records import OutRecord


@pytest.fixture(scope="module")
def mqtt_url() -> Iterator[str]:
    """One mosquitto for this module (it starts in ~10 ms)."""
    with running_mosquitto() as url:
        yield url


def unique(base: str) -> str:
    return f"{base}-{uuid.uuid4().hex[:8]}"


async def eventually(check: Any, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {check}")


def test_publish_and_subscribe_with_key_and_headers(mqtt_url: str) -> None:
    topic = unique("orders")

    async def main() -> None:
        got: list[tuple[dict[str, int], Message]] = []
        app = App("shop", broker=mqtt_url)

        @app.subscriber(topic)
        async def on_order(order: dict[str, int], message: Message) -> None:
            got.append((order, message))

        async with app:
            published = await app.publish(topic, {"n": 1}, key="k-1", headers={"trace": "t"})
            await app.publish(topic, {"n": 2})
            await eventually(lambda: len(got) == 2)
        (first, message), (second, other) = got
        assert (first, second) == ({"n": 1}, {"n": 2})
        assert (message.key, message.headers["trace"], message.id) == ("k-1", "t", published.id)
        assert other.key is None and "tidings-key" not in message.headers
        assert (published.partition, published.offset) == (0, None)
        assert message.offset < other.offset  # the subscription's own sequence

    asyncio.run(main())


def test_two_groups_each_get_every_message(mqtt_url: str) -> None:
    topic = unique("events")

    async def main() -> None:
        seen: dict[str, list[int]] = {"billing": [], "audit": []}
        apps = [App(name, broker=mqtt_url) for name in seen]
        for app, name in zip(apps, seen, strict=True):
            app.subscriber(topic, group=unique(name))(_collect(seen[name]))
        async with apps[0], apps[1]:
            await apps[0].publish_many(topic, [{"n": n} for n in range(20)])
            await eventually(lambda: all(len(v) == 20 for v in seen.values()))
        assert sorted(seen["billing"]) == sorted(seen["audit"]) == list(range(20))

    asyncio.run(main())


def test_members_of_one_group_share_the_work(mqtt_url: str) -> None:
    topic, group = unique("jobs"), unique("workers")

    async def main() -> None:
        seen: list[list[int]] = [[], []]
        apps = [App(f"worker{i}", broker=mqtt_url) for i in range(2)]
        for app, mine in zip(apps, seen, strict=True):
            app.subscriber(topic, group=group)(_collect(mine))
        async with apps[0], apps[1]:
            await apps[0].publish_many(topic, [{"n": n} for n in range(40)])
            await eventually(lambda: len(seen[0]) + len(seen[1]) == 40)
        assert seen[0] and seen[1]
        assert sorted(seen[0] + seen[1]) == list(range(40))

    asyncio.run(main())


def test_a_sigkilled_member_loses_nothing(mqtt_url: str, tmp_path: Path) -> None:
    """A named member (``?member=``) killed mid-stream resumes its session on restart
    and gets what it had not acknowledged, and what was published while it was down."""
    topic, group = unique("stream"), unique("crashy")
    url = f"{mqtt_url}?member=m1"
    outfile = tmp_path / "handled.jsonl"

    def handled() -> set[int]:
        text = outfile.read_text() if outfile.exists() else ""
        return {json.loads(line)["n"] for line in text[: text.rfind("\n") + 1].splitlines()}

    async def main() -> None:
        member = await _start_member(url, topic, group, outfile, tmp_path)
        app = App("producer", broker=mqtt_url)
        async with app:
            await app.publish_many(topic, [{"n": n} for n in range(30)])
            await eventually(lambda: len(handled()) >= 5)
            member.send_signal(signal.SIGKILL)
            member.wait()
            assert len(handled()) < 30
            await app.publish_many(topic, [{"n": n} for n in range(30, 40)])
            member = await _start_member(url, topic, group, outfile, tmp_path)
            try:
                await eventually(lambda: handled() == set(range(40)), 20)
            finally:
                member.send_signal(signal.SIGTERM)
                assert member.wait(20) == 0

    asyncio.run(main())


async def _start_member(url: str, topic: str, group: str, outfile: Path,
                        tmp: Path) -> subprocess.Popen[bytes]:
    with open(tmp / "member.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tidings.testing._member", url, topic, group, str(outfile),
             "--sleep", "0.05"],
            stdout=subprocess.PIPE, stderr=log,
        )
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    proc.stdout.close()
    assert line.strip() == b"ready", line
    await asyncio.sleep(0.3)  # subscribed (the member says ready before it starts)
    return proc


def test_failures_and_undecodable_messages_are_dead_lettered(mqtt_url: str) -> None:
    topic = unique("payments")

    async def main() -> None:
        letters: list[Message] = []
        attempts: list[int] = []
        app = App("payments", broker=mqtt_url)

        @app.subscriber(topic, retry=RetryPolicy(max_attempts=2, backoff=0.01))
        async def charge(payment: dict[str, int], message: Message) -> None:
            attempts.append(payment["n"])
            raise ValueError(f"card {payment['n']} declined")

        @app.subscriber(f"{topic}.dlq", group=unique("inspect"))
        async def inspect(payload: bytes, message: Message) -> None:
            letters.append(message)

        async with app:
            await app.publish(topic, {"n": 7}, key="k")
            await app.transport.append([OutRecord(topic, b"{not json", key="bad")])
            await eventually(lambda: len(letters) == 2)
        by_key = {m.key: m.headers for m in letters}
        failed, undecodable = by_key["k"], by_key["bad"]
        assert failed["tidings-dlq-error-type"] == "builtins.ValueError"
        assert failed["tidings-dlq-error-message"] == "card 7 declined"
        assert (failed["tidings-dlq-attempts"], failed["tidings-dlq-topic"]) == ("2", topic)
        assert undecodable["tidings-dlq-error-type"] == "tidings._errors.DecodeError"
        assert undecodable["tidings-dlq-attempts"] == "1"  # never retried
        assert attempts == [7, 7]

    asyncio.run(main())


def test_request_reply_also_with_a_plain_mqtt5_client(mqtt_url: str) -> None:
    """tidings' requests carry MQTT 5 Response Topic and Correlation Data, so a client
    that knows only MQTT 5 gets its reply too."""
    topic = unique("double")

    async def main() -> None:
        app = App("calc", broker=mqtt_url)

        @app.responder(topic)
        async def double(x: int) -> int:
            return 2 * x

        async with app:
            assert await app.request(topic, 21, timeout=5) == 42
            reply = await asyncio.to_thread(_plain_request, mqtt_url, topic, b"5")
        assert reply == (b"10", b"corr-1")

    asyncio.run(main())


def _plain_request(url: str, topic: str, body: bytes) -> tuple[bytes, bytes]:
    """A request from paho alone (its own thread loop), with MQTT 5 properties only."""
    host, port = url.removeprefix("mqtt://").split(":")
    got: list[paho.MQTTMessage] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = lambda _c, _u, message: got.append(message)
    client.connect(host, int(port))
    client.loop_start()
    try:
        client.subscribe("tidings.replies/plain", qos=1)[1]
        import time

        time.sleep(0.2)
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = "tidings.replies/plain"
        props.CorrelationData = b"corr-1"
        client.publish(topic, body, qos=1, properties=props).wait_for_publish(5)
        for _ in range(500):
            if got:
                break
            time.sleep(0.01)
    finally:
        client.loop_stop()
        client.disconnect()
    assert got, "no reply"
    return bytes(got[0].payload), bytes(got[0].properties.CorrelationData)


def _collect(into: list[int]) -> Any:
    async def handle(payload: dict[str, int]) -> None:
        into.append(payload["n"])
    return handle


def test_a_broker_restart_loses_nothing_for_a_named_member() -> None:
    """The connections are made again; the named member's session (kept by the broker
    across its restart) resumes, and what is published afterwards arrives too."""
    port, topic = free_port(), unique("survive")
    seen: list[int] = []
    # Not under pytest's tmp_path: mosquitto, dropped to its own user, cannot reach it.
    data = Path(tempfile.mkdtemp(prefix="tidings-mosquitto-data-"))

    async def main() -> None:
        url = f"mqtt://127.0.0.1:{port}?member=m1&connect_timeout=2"
        app = App("survivor", broker=url)
        app.subscriber(topic, group="g")(_collect(seen))
        broker = running_mosquitto(port=port, data=data)
        broker.__enter__()
        try:
            async with app:
                await app.publish_many(topic, [{"n": n} for n in range(10)])
                await eventually(lambda: len(seen) == 10)
                broker.__exit__(None, None, None)
                broker = running_mosquitto(port=port, data=data)
                broker.__enter__()
                # Until a member of the group is back, mosquitto drops what the group
                # is sent (see docs/mqtt.md): this is about what comes after.
                await asyncio.sleep(1.0)
                await app.publish_many(topic, [{"n": n} for n in range(10, 20)])
                await eventually(lambda: set(seen) == set(range(20)), 15)
        finally:
            broker.__exit__(None, None, None)

    try:
        asyncio.run(main())
    finally:
        shutil.rmtree(data, ignore_errors=True)


def test_a_member_down_across_a_broker_restart_gets_its_messages() -> None:
    """A named member that stopped before the broker restarted resumes its session
    afterwards, gets what was queued for it before the restart, and what comes next."""
    port, topic = free_port(), unique("later")
    seen: list[int] = []
    data = Path(tempfile.mkdtemp(prefix="tidings-mosquitto-data-"))

    def member() -> App:
        app = App("later", broker=f"mqtt://127.0.0.1:{port}?member=m2")
        app.subscriber(topic, group="g")(_collect(seen))
        return app

    async def main() -> None:
        producer = f"mqtt://127.0.0.1:{port}"
        with running_mosquitto(port=port, data=data):
            async with member():
                pass  # subscribed once: the session (and its subscription) exists
            async with App("producer", broker=producer) as app:
                await app.publish_many(topic, [{"n": n} for n in range(5)])  # queued
        with running_mosquitto(port=port, data=data):
            async with member(), App("producer", broker=producer) as app:
                await eventually(lambda: len(seen) == 5)
                await app.publish_many(topic, [{"n": n} for n in range(5, 10)])
                await eventually(lambda: sorted(seen) == list(range(10)))

    try:
        asyncio.run(main())
    finally:
        shutil.rmtree(data, ignore_errors=True)



def test_plain_mqtt5_clients_read_and_write_tidings_messages(mqtt_url: str) -> None:
    """What tidings publishes, a plain MQTT 5 client reads (headers and key as user
    properties); what a plain client publishes, with any PUBLISH property or none, a
    tidings subscriber handles (tidings decodes PUBLISH packets itself)."""
    inbound, outbound = unique("from-plain"), unique("to-plain")

    async def main() -> None:
        got: dict[int, Message] = {}
        app = App("plain", broker=mqtt_url)

        @app.subscriber(inbound, group="g")
        async def on_event(event: dict[str, int], message: Message) -> None:
            got[event["n"]] = message

        async with app:
            plain = await asyncio.to_thread(_PlainClient, mqtt_url, outbound)
            try:
                await app.publish(outbound, {"n": 9}, key="k-9", headers={"trace": "t-9"})
                payload, props = await asyncio.to_thread(plain.first)
                await asyncio.to_thread(plain.publish_three, inbound)
                await eventually(lambda: len(got) == 3)
            finally:
                plain.close()
        assert json.loads(payload) == {"n": 9}
        assert ("trace", "t-9") in props and ("tidings-key", "k-9") in props
        assert got[1].headers == {"a": "1", "b": "✓"} and got[1].key is None
        assert got[2].headers == {} and got[3].headers == {}

    asyncio.run(main())


class _PlainClient:
    """paho alone (its own thread), subscribed to ``topic``."""

    def __init__(self, url: str, topic: str) -> None:
        import threading

        host, port = url.removeprefix("mqtt://").split(":")
        self.got: list[paho.MQTTMessage] = []
        self.arrived = threading.Event()
        subscribed = threading.Event()
        client = self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        client.on_message = lambda _c, _u, message: (self.got.append(message),
                                                     self.arrived.set())
        client.on_subscribe = lambda *_: subscribed.set()
        client.connect(host, int(port))
        client.loop_start()
        client.subscribe(topic, qos=1)
        assert subscribed.wait(5), "no SUBACK"

    def first(self) -> tuple[bytes, list[tuple[str, str]]]:
        assert self.arrived.wait(5), "nothing arrived"
        message = self.got[0]
        return bytes(message.payload), list(getattr(message.properties, "UserProperty", []))

    def publish_three(self, topic: str) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.UserProperty = [("a", "1"), ("b", "✓")]
        props.ContentType, props.MessageExpiryInterval = "application/json", 60
        bare = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        bare.PayloadFormatIndicator, bare.CorrelationData = 1, b"no-reply-topic"
        for n, properties in ((1, props), (2, None), (3, bare)):
            self.client.publish(topic, json.dumps({"n": n}).encode(), qos=1,
                                properties=properties).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
