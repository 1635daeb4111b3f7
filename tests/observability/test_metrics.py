"""Metrics after a known workload: exact counts, lag, dead letters pending, outbox rows
pending, sagas by status, and the text format a scrape gets; through prometheus-client
and through OpenTelemetry metrics."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import create_async_engine

from tidings import App, GroupInfo, RetryPolicy, TopicInfo, testing
from tidings.backends.memory import MemoryBroker, MemoryTransport
from tidings.otel import OtelMetrics
from tidings.prometheus import PrometheusMetrics
from tidings.saga import MemorySagaStore, Saga, SagaEngine, SagaStatus, Step
from tidings.sqlalchemy import Outbox, create_tables

from .models import Order
from .util import until


def test_counts_after_a_known_workload(tmp_path: Path) -> None:
    async def main() -> None:
        metrics = PrometheusMetrics()
        app = App("svc", broker=testing.memory_url(), middleware=[metrics],
                  retry=RetryPolicy(max_attempts=2, backoff=0.01, jitter=0))
        metrics.watch(app)
        handled: list[int] = []

        @app.subscriber("good", concurrency=4)
        async def good(body: dict[str, int]) -> None:
            handled.append(body["n"])

        @app.subscriber("bad")
        async def bad(body: dict[str, int]) -> None:
            raise ValueError("no")

        @app.subscriber("many", batch=True)
        async def many(bodies: list[dict[str, int]]) -> None:
            handled.extend(b["n"] for b in bodies)

        @app.responder("ask")
        async def ask(body: dict[str, int]) -> int:
            return 1

        async with app:
            for n in range(5):
                await app.publish("good", {"n": n})
            await app.publish_many("bad", [{"n": 1}, {"n": 2}])
            await app.publish_many("many", [{"n": n} for n in range(3)])
            assert await app.request("ask", {}) == 1
            await until(lambda: len(handled) == 8)
            await until(lambda: metrics.registry.get_sample_value(
                "tidings_messages_dead_lettered_total",
                {"topic": "bad", "group": "svc", "handler": _name(bad)}) == 2)
            await asyncio.sleep(0.5)  # idle: offsets committed
            text = (await metrics.render()).decode()

        def value(name: str, **labels: str) -> float | None:
            return metrics.registry.get_sample_value(name, labels)

        good_labels = {"topic": "good", "group": "svc", "handler": _name(good)}
        bad_labels = {"topic": "bad", "group": "svc", "handler": _name(bad)}
        many_labels = {"topic": "many", "group": "svc", "handler": _name(many)}
        assert value("tidings_messages_consumed_total", **good_labels) == 5
        assert value("tidings_messages_handled_total", **good_labels) == 5
        assert value("tidings_messages_failed_total", **good_labels) == 0
        assert value("tidings_messages_consumed_total", **bad_labels) == 4  # 2 x 2 attempts
        assert value("tidings_messages_failed_total", **bad_labels) == 4
        assert value("tidings_messages_retried_total", **bad_labels) == 2
        assert value("tidings_messages_dead_lettered_total", **bad_labels) == 2
        assert value("tidings_messages_handled_total", **many_labels) == 3
        assert value("tidings_handler_duration_seconds_count", **good_labels) == 5
        assert value("tidings_handlers_in_flight", **good_labels) == 0
        assert value("tidings_messages_published_total", topic="good", kind="publish") == 5
        assert value("tidings_messages_published_total", topic="bad.dlq",
                     kind="dead-letter") == 2
        assert value("tidings_messages_published_total", topic="ask", kind="request") == 1
        assert value("tidings_messages_published_total", topic="tidings.replies",
                     kind="reply") == 1
        assert value("tidings_dead_letters_pending", topic="bad") == 2
        lags = {s.labels["topic"]: s.value for f in text_string_to_metric_families(text)
                if f.name == "tidings_consumer_lag" for s in f.samples}
        assert set(lags) >= {"good", "bad", "many", "ask"} and set(lags.values()) == {0.0}

    asyncio.run(main())


def _name(func: object) -> str:
    return str(func.__qualname__)  # type: ignore[attr-defined]


def test_outbox_and_saga_gauges(tmp_path: Path) -> None:
    async def main() -> None:
        metrics = PrometheusMetrics()
        app = App("svc", broker=testing.memory_url())
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/svc.db")
        await create_tables(engine)
        outbox = Outbox(engine)  # no relay: rows stay pending
        store = MemorySagaStore()

        async def fail(order: Order) -> Order:
            raise RuntimeError("down")

        saga = Saga("s", Order, [Step("ok", _same, compensation=_same), Step("no", fail)])
        sagas = SagaEngine(app, store, [saga])
        metrics.watch_outbox(outbox)
        metrics.watch_sagas(store)
        async with app:
            async with engine.begin() as conn:
                for n in range(3):
                    await outbox.publish(conn, "t", {"n": n})
            await sagas.wait(await sagas.start(saga, Order(order_id="1")))
            await asyncio.sleep(0.2)
            await metrics.refresh()
        assert metrics.registry.get_sample_value("tidings_outbox_pending") == 3
        age = metrics.registry.get_sample_value("tidings_outbox_oldest_age_seconds")
        assert age is not None and 0.1 < age < 30
        compensated = metrics.registry.get_sample_value(
            "tidings_sagas", {"status": str(SagaStatus.COMPENSATED)})
        assert compensated == 1
        assert metrics.registry.get_sample_value(
            "tidings_sagas", {"status": str(SagaStatus.RUNNING)}) == 0
        await engine.dispose()

    asyncio.run(main())


async def _same(order: Order) -> Order:
    return order


def test_the_same_metrics_through_opentelemetry() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])

    async def main() -> None:
        metrics = OtelMetrics(provider, refresh_interval=0.1)
        app = App("svc", broker=testing.memory_url(), middleware=[metrics],
                  retry=RetryPolicy(max_attempts=1))
        metrics.watch(app)
        handled: list[int] = []

        @app.subscriber("good")
        async def good(body: dict[str, int]) -> None:
            handled.append(body["n"])

        @app.subscriber("bad")
        async def bad(body: dict[str, int]) -> None:
            raise ValueError("no")

        async with app:
            for n in range(4):
                await app.publish("good", {"n": n})
            await app.publish("bad", {"n": 0})
            await until(lambda: len(handled) == 4)
            await asyncio.sleep(0.6)  # idle, and refreshed since

    asyncio.run(main())
    points: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    if value is None:
                        value = point.count  # a histogram: how many observations
                    points[(metric.name, tuple(sorted(point.attributes.items())))] = value

    def value(name: str, **labels: str) -> float | None:
        return points.get((name, tuple(sorted(labels.items()))))

    good_labels = {"topic": "good", "group": "svc", "handler": _name_of("good")}
    bad_labels = {"topic": "bad", "group": "svc", "handler": _name_of("bad")}
    assert value("tidings_messages_consumed", **good_labels) == 4
    assert value("tidings_messages_handled", **good_labels) == 4
    assert value("tidings_handler_duration_seconds", **good_labels) == 4
    assert value("tidings_handlers_in_flight", **good_labels) == 0
    assert value("tidings_messages_dead_lettered", **bad_labels) == 1
    assert value("tidings_messages_published", topic="good", kind="publish") == 4
    assert value("tidings_dead_letters_pending", topic="bad") == 1
    lags = {k: v for k, v in points.items() if k[0] == "tidings_consumer_lag"}
    assert lags and set(lags.values()) == {0}


def _name_of(handler: str) -> str:
    return f"test_the_same_metrics_through_opentelemetry.<locals>.main.<locals>.{handler}"


def test_a_scrape_asks_the_bus_its_questions_at_once() -> None:
    """On a bus whose every question waits (amqp:// finds a stream's end by waiting for
    it to stay quiet), a scrape costs two waits (lag and topics asked together, then the
    dead letters read), not the sum of its questions (four)."""
    wait = 0.5

    class SlowAnswers(MemoryTransport):
        async def describe_topics(self) -> list[TopicInfo]:
            await asyncio.sleep(wait)
            return await super().describe_topics()

        async def describe_groups(self) -> list[GroupInfo]:
            await asyncio.sleep(wait)
            return await super().describe_groups()

    async def main() -> None:
        metrics = PrometheusMetrics()
        app = App("svc", broker=SlowAnswers(MemoryBroker()))
        metrics.watch(app)

        @app.subscriber("orders")
        async def handle(body: dict[str, int]) -> None:
            pass

        async with app:
            await app.publish("orders", {"n": 1})
            await app.publish("orders.dlq", {"n": 1})
            started = time.monotonic()
            text = (await metrics.render()).decode()
            took = time.monotonic() - started
        assert "tidings_consumer_lag" in text
        assert took < 3 * wait, f"a scrape took {took:.2f} s: its questions were asked in turn"

    asyncio.run(main())
