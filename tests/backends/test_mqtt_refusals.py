"""What MQTT cannot do is refused by name, and bad input fails in one clear error."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import pytest

from mqtt_broker import free_port, running_mosquitto
from tidings import (
    App,
    BrokerUnavailableError,
    ConfigurationError,
    MessageTooLargeError,
)
from tidings._records import TopicPartition

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def mqtt_url() -> Iterator[str]:
    """A mosquitto with a password and a packet size limit."""
    with running_mosquitto(users={"alice": "s3cret"}, extra=f"max_packet_size {LIMIT}") as url:
        yield url


def _refused_at_start(url: str, register: str) -> str:
    app = App("refuse", broker=url)

    async def handler(payload: dict[str, int]) -> None:
        pass

    if register == "worker":
        app.worker("jobs")(handler)
    elif register == "concurrency":
        app.subscriber("t", concurrency=4)(handler)
    else:
        app.subscriber("t", exactly_once=True)(handler)

    async def main() -> None:
        async with app:
            pass

    with pytest.raises(ConfigurationError) as info:
        asyncio.run(main())
    return str(info.value)


@pytest.mark.parametrize(("register", "capability"), [
    ("worker", "priority"), ("concurrency", "order_per_key"), ("exactly_once", "exactly_once"),
])
def test_subscriber_options_mqtt_cannot_honour_are_refused_at_start(
    mqtt_url: str, register: str, capability: str,
) -> None:
    message = _refused_at_start(mqtt_url, register)
    assert "mqtt" in message and repr(capability) in message


def test_log_operations_and_delays_are_refused_at_the_call(mqtt_url: str) -> None:
    async def main() -> None:
        async with App("refuse", broker=mqtt_url) as app:
            transport = app.transport
            calls = {
                "replay": [
                    transport.read("t", 0, 0, 10),
                    transport.set_offsets("g", {TopicPartition("t", 0): 0}),
                    transport.offsets_for_time("t", time.time()),
                    app.dead_letters("t").pending(),
                ],
                "delay": [app.publish("t", {"n": 1}, delay=60)],
                "order_per_key": [app.publish("t", {"n": 1}, partition=3),
                                  transport.ensure_topic("t", 4)],
            }
            for capability, awaitables in calls.items():
                for each in awaitables:
                    # Both named, in either order (App.publish names the capability first).
                    with pytest.raises(ConfigurationError, match=f"'{capability}'") as caught:
                        await each
                    assert "mqtt" in str(caught.value), caught.value

    asyncio.run(main())


def test_a_message_over_the_broker_limit_is_refused(mqtt_url: str) -> None:
    async def main() -> None:
        async with App("big", broker=mqtt_url) as app:
            with pytest.raises(MessageTooLargeError, match=f"limit of {LIMIT} bytes"):
                await app.publish("t", b"x" * (LIMIT + 1))
            await app.publish("t", b"x" * 1000)  # the connection is still fine

    asyncio.run(main())


def test_broker_down_is_one_error_within_the_connect_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}?connect_timeout=2"

    async def main() -> None:
        async with App("nobody", broker=url):
            pass

    started = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(BrokerUnavailableError, match=url[:-18]):
        asyncio.run(main())
    assert time.monotonic() - started < 2
    assert not [r for r in caplog.records if r.name.startswith(("paho", "tidings.mqtt"))]


def test_wrong_credentials_are_a_clear_configuration_error(mqtt_url: str) -> None:
    async def main() -> None:
        async with App("intruder", broker=mqtt_url.replace("s3cret", "guess")):
            pass

    with pytest.raises(ConfigurationError, match="refused the connection: Not authorized"):
        asyncio.run(main())


@pytest.mark.parametrize("url", [
    "mqtt://localhost:1883?nonsense=1", "mqtt://localhost:1883?member=a/b",
    "mqtt://localhost:99999", "mqtt:///nohost",
])
def test_bad_urls_are_refused_when_the_app_is_built(url: str) -> None:
    with pytest.raises(ConfigurationError, match="mqtt"):
        App("bad", broker=url)
