"""Tracing in one process, with the OpenTelemetry SDK's in-memory exporter: batch spans
link their messages, batch sends stamp every record, delayed messages and re-drives keep
their trace, a responder's failure marks its span, and an app without the middleware
adds no header."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tidings import App, Message, RemoteError, RetryPolicy, testing
from tidings.otel import TracingMiddleware

from .util import until


@pytest.fixture
def traced() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def _named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]



def test_batches_delays_redrives_and_responder_failures(traced) -> None:  # type: ignore[no-untyped-def]
    provider, exporter = traced

    async def main() -> None:
        app = App("svc", broker=testing.memory_url(), middleware=[TracingMiddleware(provider)],
                  retry=RetryPolicy(max_attempts=1))
        batches: list[list[Message]] = []
        later: list[Message] = []
        fail = [True]

        @app.subscriber("many", batch=True)
        async def many(bodies: list[dict[str, int]], messages: list[Message]) -> None:
            batches.append(messages)

        @app.subscriber("later")
        async def on_later(body: dict[str, int], message: Message) -> None:
            if fail[0]:
                raise ValueError("first time")
            later.append(message)

        @app.responder("ask")
        async def ask(body: dict[str, int]) -> int:
            raise KeyError("nothing")

        async with app:
            await app.publish_many("many", [{"n": n} for n in range(3)])
            await until(lambda: sum(map(len, batches)) == 3)
            await app.publish("later", {"n": 1}, delay=0.2)
            await until(lambda: bool(_named(exporter.get_finished_spans(), "send later.dlq")))
            fail[0] = False
            await app.dead_letters("later").redrive()
            await until(lambda: len(later) == 1)
            with pytest.raises(RemoteError):
                await app.request("ask", {}, timeout=5)
            await asyncio.sleep(0.1)
        spans = exporter.get_finished_spans()

        (send_many,) = _named(spans, "send many")
        assert send_many.attributes["messaging.batch.message_count"] == 3
        stamped = {m.headers["traceparent"] for batch in batches for m in batch}
        assert len(stamped) == 1 and f"{send_many.context.span_id:016x}" in stamped.pop()
        (process_many,) = _named(spans, "process many")
        assert process_many.kind is SpanKind.CONSUMER
        assert {link.context.span_id for link in process_many.links} == \
            {send_many.context.span_id}
        assert len(process_many.links) == 3
        assert process_many.attributes["messaging.batch.message_count"] == 3

        (send_later,) = [s for s in _named(spans, "send later")
                         if s.attributes["messaging.operation.name"] == "publish"]
        assert "messaging.tidings.deliver_at" in send_later.attributes
        failed, handled = sorted(_named(spans, "process later"), key=lambda s: s.start_time)
        assert failed.parent.span_id == send_later.context.span_id
        assert "dead_letter" in [e.name for e in failed.events]
        (dead,) = _named(spans, "send later.dlq")
        assert dead.parent.span_id == send_later.context.span_id
        (redriven,) = [s for s in _named(spans, "send later")
                       if s.attributes["messaging.operation.name"] == "redrive"]
        assert redriven.parent.span_id == dead.context.span_id  # the trace goes on
        assert redriven.context.trace_id == send_later.context.trace_id
        assert handled.parent.span_id == redriven.context.span_id

        (answer,) = _named(spans, "process ask")
        assert answer.attributes["error.type"] == "KeyError"
        assert answer.status.status_code.name == "ERROR"
        (reply,) = _named(spans, "send tidings.replies")
        assert reply.parent.span_id == answer.context.span_id

    asyncio.run(main())


def test_without_the_middleware_no_header_is_added() -> None:
    async def main() -> None:
        app = App("svc", broker=testing.memory_url())
        got: list[Message] = []

        @app.subscriber("t")
        async def handle(body: dict[str, int], message: Message) -> None:
            got.append(message)

        async with app:
            await app.publish("t", {"n": 1})
            await until(lambda: bool(got))
        assert "traceparent" not in got[0].headers

    asyncio.run(main())
