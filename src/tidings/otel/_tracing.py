"""The tracing middleware: spans named and attributed by the OpenTelemetry messaging
semantic conventions, and W3C trace context carried in message headers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context, attach, detach
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from .. import __version__
from .._message import Headers, Message
from .._middleware import AppendCall, AppendNext, CallNext, HandlerCall, Middleware
from .._records import OutRecord, Position

__all__ = ["TracingMiddleware"]

#: Appends that re-send a message recorded earlier: their send continues the trace the
#: message carries (the outbox row's, the failed message's), not the caller's.
_CARRIED = frozenset({"relay", "dead-letter", "redrive"})
_TRACEPARENT = "traceparent"


class TracingMiddleware(Middleware):
    """Traces every handler call and every append of the app it is added to.

    ``tracer_provider`` defaults to the global one (see :func:`configure_tracing`).
    Retries and dead-lettering show as ``retry`` and ``dead_letter`` events of the
    failed process span, which also gets ``error.type`` and an ERROR status; the dead
    letter's own send span continues the failed message's trace.
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("tidings", __version__, tracer_provider=tracer_provider)

    # -- consuming -----------------------------------------------------------------

    async def handle(self, call: HandlerCall, call_next: CallNext) -> Any:
        """Run the call inside a ``process <topic>`` CONSUMER span."""
        messages = call.messages
        if call.kind == "batch":
            links = [Link(ctx) for m in messages
                     if (ctx := _span_context(m.headers)) is not None]
            parent: Context | None = None
        else:
            links, parent = [], propagate.extract(call.message.headers)
        span = self._tracer.start_span(
            _name("process", {m.topic for m in messages}), context=parent,
            kind=SpanKind.CONSUMER, attributes=_process_attributes(call), links=links,
        )
        token = attach(trace.set_span_in_context(span))  # what the handler publishes
        try:
            result = await call_next(call)
            if call.error is not None:  # a responder's failure, sent as an error reply
                _failed(span, call.error, call)
            return result
        except Exception as exc:
            _failed(span, exc, call)
            raise
        finally:
            detach(token)
            span.end()

    # -- appending -----------------------------------------------------------------

    async def append(self, call: AppendCall, call_next: AppendNext) -> Sequence[Position]:
        """Run the append inside ``send <topic>`` PRODUCER spans (``create`` for an
        outbox row), each record carrying its span's context."""
        spans = list(self._producer_spans(call))
        try:
            positions = await call_next(call)
            if call.kind != "create":
                _landed(spans, call, positions)
            return positions
        except Exception as exc:
            for span, _ in spans:
                _failed(span, exc, None)
            raise
        finally:
            for span, _ in spans:
                span.end()

    def _producer_spans(self, call: AppendCall) -> Iterator[tuple[Span, list[OutRecord]]]:
        """One span per record that carries its own trace (a re-send) or is created (an
        outbox row); one span for all the others, under the current context."""
        operation = "create" if call.kind == "create" else "send"
        shared: list[OutRecord] = []
        for record in call.records:
            own = call.kind == "create" or (
                call.kind in _CARRIED and _TRACEPARENT in record.headers)
            if own:
                parent = propagate.extract(record.headers) if call.kind in _CARRIED else None
                yield self._producer_span(operation, call, [record], parent), [record]
            else:
                shared.append(record)
        if shared:
            yield self._producer_span(operation, call, shared, None), shared

    def _producer_span(self, operation: str, call: AppendCall, records: list[OutRecord],
                       parent: Context | None) -> Span:
        span = self._tracer.start_span(
            _name(operation, {r.topic for r in records}), context=parent,
            kind=SpanKind.PRODUCER, attributes=_send_attributes(operation, call, records),
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        for record in records:
            record.headers = {**record.headers, **carrier}
        return span


def _name(operation: str, topics: set[str]) -> str:
    return f"{operation} {next(iter(topics))}" if len(topics) == 1 else operation


def _span_context(headers: Mapping[str, str]) -> trace.SpanContext | None:
    context = trace.get_current_span(propagate.extract(headers)).get_span_context()
    return context if context.is_valid else None


def _process_attributes(call: HandlerCall) -> dict[str, Any]:
    message = call.message
    attributes: dict[str, Any] = {
        "messaging.system": call.system,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": message.topic,
        "messaging.consumer.group.name": call.group or "",
        "messaging.tidings.handler": call.handler,
        "messaging.tidings.kind": call.kind,
        "messaging.tidings.attempt": call.attempt,
    }
    if len(call.messages) > 1:
        attributes["messaging.batch.message_count"] = len(call.messages)
        return attributes
    attributes.update(_message_attributes(message, call.system))
    return attributes


def _message_attributes(message: Message, system: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.destination.partition.id": str(message.partition),
        "messaging.message.id": message.id,
        "messaging.message.conversation_id": message.correlation_id or message.id,
    }
    if system == "kafka":
        attributes["messaging.kafka.offset"] = message.offset
        if message.key is not None:
            attributes["messaging.kafka.message.key"] = message.key
    return attributes


def _send_attributes(operation: str, call: AppendCall,
                     records: list[OutRecord]) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": call.system,
        "messaging.operation.type": operation,
        "messaging.operation.name": call.kind,
    }
    topics = {r.topic for r in records}
    if len(topics) == 1:
        attributes["messaging.destination.name"] = records[0].topic
    if len(records) > 1:
        attributes["messaging.batch.message_count"] = len(records)
        return attributes
    record = records[0]
    message_id = record.headers.get(Headers.ID)
    if message_id is not None:
        attributes["messaging.message.id"] = message_id
        attributes["messaging.message.conversation_id"] = \
            record.headers.get(Headers.CORRELATION_ID, message_id)
    if call.system == "kafka" and record.key is not None:
        attributes["messaging.kafka.message.key"] = record.key
    if record.deliver_at is not None:
        attributes["messaging.tidings.deliver_at"] = record.deliver_at
    return attributes


def _landed(spans: list[tuple[Span, list[OutRecord]]], call: AppendCall,
            positions: Sequence[Position]) -> None:
    """Where a single-record span's record landed (partition, and offset on Kafka)."""
    if len(positions) != len(call.records):
        return
    index = {id(record): n for n, record in enumerate(call.records)}
    for span, records in spans:
        if len(records) != 1:
            continue
        position = positions[index[id(records[0])]]
        if position.partition is not None:
            span.set_attribute("messaging.destination.partition.id", str(position.partition))
        if call.system == "kafka" and position.offset is not None:
            span.set_attribute("messaging.kafka.offset", position.offset)


def _failed(span: Span, exc: BaseException, call: HandlerCall | None) -> None:
    module = type(exc).__module__
    error_type = type(exc).__qualname__ if module == "builtins" else \
        f"{module}.{type(exc).__qualname__}"
    span.set_attribute("error.type", error_type)
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:500]))
    if call is None:
        return
    if call.retry_in is not None:
        span.add_event("retry", {"messaging.tidings.attempt": call.attempt,
                                 "messaging.tidings.retry_in_s": call.retry_in})
    elif call.dead_lettered:
        span.add_event("dead_letter", {
            "messaging.tidings.attempt": call.attempt,
            "messaging.tidings.reason": call.reason or "",
            "messaging.destination.name": f"{call.topic}.dlq",
        })
