"""One traced service of the cross-process trace test, run as its own OS process.

Usage: python traced.py ROLE BROKER WORKDIR SUFFIX

Every span it ends is written at once to WORKDIR/spans-ROLE.jsonl by a real SDK span
processor (one JSON line per span), so the test reads what each process exported.

* ``front``: records ``orders-SUFFIX`` in its outbox inside a ``POST /orders`` server
  span; its relay publishes it.
* ``orders``: on that event, starts a saga in a transaction of its own database; the
  saga's ``reserve`` step is a command (request/reply) to inventory, its ``ship`` step
  publishes ``shipments-SUFFIX``.
* ``inventory``: answers the command; its ``shipping`` group fails a shipment once and
  retries it; its ``audit`` group always fails and dead-letters it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import create_async_engine

from tidings import App, RetryPolicy
from tidings.otel import TracingMiddleware
from tidings.saga import Command, Saga, SagaEngine, Step
from tidings.sqlalchemy import Outbox, SqlSagaStore, create_tables


class JsonLinesExporter(SpanExporter):
    """Writes each span as one JSON line (one O_APPEND write: a kill loses no line)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            line = {
                "name": span.name, "kind": span.kind.name,
                "trace_id": f"{span.context.trace_id:032x}",
                "span_id": f"{span.context.span_id:016x}",
                "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                "service": span.resource.attributes.get("service.name"),
                "attributes": dict(span.attributes or {}),
                "events": [e.name for e in span.events],
                "links": [f"{link.context.span_id:016x}" for link in span.links],
                "status": span.status.status_code.name,
            }
            os.write(self._fd, (json.dumps(line, default=str) + "\n").encode())
        return SpanExportResult.SUCCESS


class Order(BaseModel):
    order_id: str
    reserved: bool = False


FAST = RetryPolicy(max_attempts=3, backoff=0.05, jitter=0)


def build(role: str, broker: str, work: Path, suffix: str) -> App:
    provider = TracerProvider(resource=Resource.create({"service.name": role}))
    exporter = JsonLinesExporter(work / f"spans-{role}.jsonl")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = App(role, broker=broker, retry=FAST, middleware=[TracingMiddleware(provider)])
    engine = create_async_engine(f"sqlite+aiosqlite:///{work}/{role}.db")
    app.on_startup(lambda: create_tables(engine))
    topics = {n: f"{n}-{suffix}" for n in ("orders", "reserve", "shipments")}
    if role == "front":
        _front(app, engine, provider, topics)
    elif role == "orders":
        _orders(app, engine, topics)
    else:
        _inventory(app, topics, work)
    return app


def _front(app: App, engine: Any, provider: TracerProvider, topics: dict[str, str]) -> None:
    outbox = Outbox(engine)
    outbox.relay(app, interval=0.05)
    tracer = provider.get_tracer("front")

    async def place_order() -> None:
        with tracer.start_as_current_span("POST /orders", kind=trace.SpanKind.SERVER):
            async with engine.begin() as conn:
                await outbox.publish(conn, topics["orders"], {"order_id": "o-1"}, key="o-1")

    app.on_startup(place_order)


def _orders(app: App, engine: Any, topics: dict[str, str]) -> None:
    async def ship(order: Order) -> Order:
        await app.publish(topics["shipments"], {"order_id": order.order_id}, key=order.order_id)
        return order

    saga = Saga("place-order", Order, [
        Step("reserve", Command(topics["reserve"], lambda o: {"order_id": o.order_id},
                                on_reply=lambda o, reply: o.model_copy(update={"reserved": True}))),
        Step("ship", ship, retriable=True),
    ])
    sagas = SagaEngine(app, SqlSagaStore(engine), [saga], poll_interval=0.1)

    @app.subscriber(topics["orders"])
    async def on_order(body: dict[str, str]) -> None:
        async with engine.begin() as conn:
            await sagas.start(saga, Order(order_id=body["order_id"]), within=conn)


def _inventory(app: App, topics: dict[str, str], work: Path) -> None:
    failures: list[str] = []

    @app.responder(topics["reserve"])
    async def reserve(body: dict[str, str]) -> dict[str, bool]:
        return {"reserved": True}

    @app.subscriber(topics["shipments"], group="shipping")
    async def shipping(body: dict[str, str]) -> None:
        if not failures:
            failures.append(body["order_id"])
            raise ConnectionError("carrier down")
        (work / "shipped").write_text(body["order_id"])

    @app.subscriber(topics["shipments"], group="audit",
                    retry=RetryPolicy(max_attempts=1))
    async def audit(body: dict[str, str]) -> None:
        raise ValueError("audit refuses it")


def main() -> None:
    role, broker, work, suffix = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    app = build(role, broker, work, suffix)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with app:
            (work / f"ready-{role}").touch()
            await stop.wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
