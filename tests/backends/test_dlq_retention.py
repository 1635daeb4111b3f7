"""Issue 16, item 3: retention never deletes a pending dead letter silently.

On the embedded bus the normal retention passes dead-letter topics by: their pending
entries stay until re-driven or purged (resolved ones then go with the normal
retention); ``dlq_retention_hours`` bounds them, and each pending one it deletes is
logged and counted (``tidings_dead_letters_trimmed``). On Kafka, the dead-letter
topics tidings creates keep their records (``retention.ms=-1``) unless
``dlq_retention_hours`` is set.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import pytest

from tidings import App, RetryPolicy
from tidings.backends.sqlite import SqliteTransport
from tidings.prometheus import PrometheusMetrics

RETAIN = 0.0002  # hours: 0.72 s


async def _fail_one(app: App, topic: str) -> None:
    """Dead-letter one message of ``topic`` and append another that is handled."""
    handled: list[int] = []

    @app.subscriber(topic, retry=RetryPolicy.never())
    async def handle(payload: dict[str, int]) -> None:
        if payload["n"] == 0:
            raise ValueError("poison")
        handled.append(payload["n"])

    await app.start()
    await app.publish(topic, {"n": 0})
    await app.publish(topic, {"n": 1})
    for _ in range(500):
        if handled and await _pending(app, topic):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("no dead letter")


async def _pending(app: App, topic: str) -> int:
    try:
        return len(await app.dead_letters(topic).pending())
    except LookupError:
        return 0


def _sqlite(app: App) -> SqliteTransport:
    transport = app.transport
    assert isinstance(transport, SqliteTransport)
    return transport


def test_retention_keeps_pending_dead_letters_until_resolved(tmp_path: Path) -> None:
    async def main() -> None:
        app = App("svc", broker=f"sqlite:///{tmp_path}/bus.db?retention_hours={RETAIN}")
        try:
            await _fail_one(app, "orders")
            await asyncio.sleep(1.0)  # older than the retention
            await _sqlite(app).apply_retention()
            infos = {i.name: i for i in await app.transport.describe_topics()}
            assert sum(infos["orders"].start_offsets.values()) == 2  # trimmed as usual
            assert await _pending(app, "orders") == 1  # the dead letter is kept
            assert _sqlite(app).dead_letters_trimmed() == {}

            assert await app.dead_letters("orders").purge() == 1  # resolved: may go
            await asyncio.sleep(1.0)
            await _sqlite(app).apply_retention()
            dlq = {i.name: i for i in await app.transport.describe_topics()}["orders.dlq"]
            assert dlq.start_offsets == dlq.end_offsets  # the entry and its marker went
            assert await _pending(app, "orders") == 0
        finally:
            await app.stop()

    asyncio.run(main())


def test_dlq_retention_deletes_pending_dead_letters_with_a_warning_and_a_count(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path}/bus.db?dlq_retention_hours={RETAIN}"

    async def main() -> bytes:
        metrics = PrometheusMetrics()
        app = App("svc", broker=url, middleware=[metrics])
        metrics.watch(app)
        try:
            await _fail_one(app, "orders")
            await asyncio.sleep(1.0)
            await _sqlite(app).apply_retention()
            assert await _pending(app, "orders") == 0
            assert _sqlite(app).dead_letters_trimmed() == {"orders.dlq": 1}
            await metrics.refresh()
            await metrics.refresh()  # counted once, not at every refresh
            return await metrics.render()
        finally:
            await app.stop()

    caplog.set_level(logging.WARNING, logger="tidings.sqlite")
    text = asyncio.run(main()).decode()
    assert 'tidings_dead_letters_trimmed_total{topic="orders"} 1.0' in text
    assert any("1 pending dead letter(s) of orders.dlq" in r.getMessage()
               for r in caplog.records)


def test_kafka_dead_letter_topics_keep_their_records(kafka_url: str) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource

    topic = f"orders-{uuid.uuid4().hex[:8]}"
    bounded = f"{topic}-b"

    async def main() -> None:
        async with App("svc", broker=kafka_url) as app:
            await app.transport.ensure_topic(f"{topic}.dlq")
            await app.transport.ensure_topic(topic)
        sep = "&" if "?" in kafka_url else "?"
        async with App("svc", broker=f"{kafka_url}{sep}dlq_retention_hours=2") as app:
            await app.transport.ensure_topic(f"{bounded}.dlq")

    asyncio.run(main())
    admin = AdminClient({"bootstrap.servers": kafka_url.split("://")[1].partition("?")[0]})

    def retention(name: str) -> str | None:
        (future,) = admin.describe_configs([ConfigResource("topic", name)]).values()
        entry = future.result(10).get("retention.ms")
        return None if entry is None else str(entry.value)

    assert retention(f"{topic}.dlq") == "-1"
    assert retention(f"{bounded}.dlq") == str(2 * 3_600_000)
    assert retention(topic) != "-1"
