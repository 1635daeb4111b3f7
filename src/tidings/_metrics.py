"""Metrics as a middleware, written once for any metrics library.

:class:`MetricsMiddleware` counts what handlers and appends do and, when refreshed,
reads the gauges that need a query (lag, dead letters, outbox, sagas). It records into
a :class:`Sink`: ``tidings.prometheus`` gives one over prometheus-client,
``tidings.otel`` one over the OpenTelemetry metrics API. The metrics, by name:

``tidings_messages_consumed`` (every delivery to a handler), ``_handled``, ``_failed``,
``_retried``, ``_dead_lettered`` (counters; labels topic, group, handler);
``tidings_handler_duration_seconds`` (histogram); ``tidings_handlers_in_flight``;
``tidings_messages_published`` (counter; topic, kind) and
``tidings_publish_duration_seconds`` (histogram; kind); ``tidings_dead_letters_trimmed``
(counter; topic: pending dead letters the bus's retention deleted, read on refresh from
:meth:`~tidings.ports.Transport.dead_letters_trimmed`); the gauges
``tidings_consumer_lag`` (group, topic, partition), ``tidings_dead_letters_pending``
(topic), ``tidings_outbox_pending``, ``tidings_outbox_oldest_age_seconds`` and
``tidings_sagas`` (status). Prometheus adds ``_total`` to counter names.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ._errors import TidingsError
from ._middleware import AppendCall, AppendNext, CallNext, HandlerCall, Middleware
from ._records import Position

if TYPE_CHECKING:
    from ._app import App
    from .saga import SagaStore
    from .sqlalchemy import Outbox

__all__ = ["Instrument", "MetricsMiddleware", "Sink"]

log = logging.getLogger("tidings.metrics")
_HANDLER = ("topic", "group", "handler")


class Instrument(Protocol):
    """One metric, prometheus-client style: ``labels(*values)`` gives the child to
    ``inc``, ``dec``, ``observe`` or ``set``; ``clear`` forgets every child."""

    def labels(self, *values: str) -> Any:
        """The child for these label values."""

    def clear(self) -> None:
        """Forget every child (a gauge whose label sets come and go)."""


class Sink(Protocol):
    """Makes the instruments of a metrics library."""

    def counter(self, name: str, doc: str, labels: Sequence[str]) -> Instrument:
        """A monotonic counter (children: ``inc(n)``)."""

    def histogram(self, name: str, doc: str, labels: Sequence[str]) -> Instrument:
        """A histogram of seconds (children: ``observe(v)``)."""

    def gauge(self, name: str, doc: str, labels: Sequence[str]) -> Instrument:
        """A gauge (children: ``set(v)``, ``inc(n)``, ``dec(n)``)."""


class MetricsMiddleware(Middleware):
    """Counts an app's handler calls and appends into ``sink``; see the module."""

    def __init__(self, sink: Sink) -> None:
        self.consumed = sink.counter("tidings_messages_consumed",
                                     "Deliveries to a handler (every attempt)", _HANDLER)
        self.handled = sink.counter("tidings_messages_handled",
                                    "Deliveries handled without error", _HANDLER)
        self.failed = sink.counter("tidings_messages_failed",
                                   "Deliveries whose handler raised", _HANDLER)
        self.retried = sink.counter("tidings_messages_retried",
                                    "Failed deliveries to be retried", _HANDLER)
        self.dead_lettered = sink.counter("tidings_messages_dead_lettered",
                                          "Failed deliveries sent to the dead letters", _HANDLER)
        self.duration = sink.histogram("tidings_handler_duration_seconds",
                                       "Handler call duration", _HANDLER)
        self.in_flight = sink.gauge("tidings_handlers_in_flight", "Handler calls running now",
                                    _HANDLER)
        self.published = sink.counter("tidings_messages_published",
                                      "Messages appended to the bus", ("topic", "kind"))
        self.publish_duration = sink.histogram("tidings_publish_duration_seconds",
                                               "Append duration (until durable)", ("kind",))
        self.lag = sink.gauge("tidings_consumer_lag", "End offset minus committed offset",
                              ("group", "topic", "partition"))
        self.dead_letters = sink.gauge("tidings_dead_letters_pending",
                                       "Dead letters not re-driven or purged", ("topic",))
        self.dead_letters_trimmed = sink.counter(
            "tidings_dead_letters_trimmed",
            "Pending dead letters deleted by retention (dlq_retention_hours)", ("topic",))
        self._trimmed_seen: dict[tuple[int, str], int] = {}
        self.outbox_pending = sink.gauge("tidings_outbox_pending",
                                         "Outbox rows not yet relayed", ())
        self.outbox_age = sink.gauge("tidings_outbox_oldest_age_seconds",
                                     "Age of the oldest outbox row not yet relayed", ())
        self.sagas = sink.gauge("tidings_sagas", "Saga instances by status", ("status",))
        self._bound: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        self._apps: list[App] = []
        self._outboxes: list[Outbox] = []
        self._stores: list[SagaStore] = []

    # -- the middleware ------------------------------------------------------------

    async def handle(self, call: HandlerCall, call_next: CallNext) -> Any:
        """Count the call and time it."""
        count = len(call.messages)
        labels = (call.topic, call.group or "", call.handler)
        bound = self._bound.get(labels) or self._bind(labels)
        consumed, handled, failed, retried, dead_lettered, duration, in_flight = bound
        consumed.inc(count)
        in_flight.inc()
        started = time.perf_counter()
        try:
            result = await call_next(call)
        except Exception:
            failed.inc(count)
            if call.retry_in is not None:
                retried.inc(count)
            elif call.dead_lettered:
                dead_lettered.inc(count)
            raise
        finally:
            duration.observe(time.perf_counter() - started)
            in_flight.dec()
        (failed if call.error is not None else handled).inc(count)
        return result

    def _bind(self, labels: tuple[str, str, str]) -> tuple[Any, ...]:
        """The metrics of one handler, made (and so reported, at 0) on its first call."""
        bound = tuple(m.labels(*labels) for m in (
            self.consumed, self.handled, self.failed, self.retried, self.dead_lettered,
            self.duration, self.in_flight))
        self._bound[labels] = bound
        return bound

    async def append(self, call: AppendCall, call_next: AppendNext) -> Sequence[Position]:
        """Count appended messages per topic and time the append."""
        if call.kind == "create":  # an outbox row: counted when the relay sends it
            return await call_next(call)
        started = time.perf_counter()
        positions = await call_next(call)
        self.publish_duration.labels(call.kind).observe(time.perf_counter() - started)
        records = call.records
        if len({r.topic for r in records}) == 1:
            self.published.labels(records[0].topic, call.kind).inc(len(records))
        else:
            for record in records:
                self.published.labels(record.topic, call.kind).inc()
        return positions

    # -- gauges read on refresh ----------------------------------------------------

    def watch(self, app: App) -> None:
        """Report ``app``'s lag per partition and the dead letters pending on its bus."""
        self._apps.append(app)

    def watch_outbox(self, outbox: Outbox) -> None:
        """Report ``outbox``'s pending rows and the age of the oldest."""
        self._outboxes.append(outbox)

    def watch_sagas(self, store: SagaStore) -> None:
        """Report how many sagas of ``store`` are in each status."""
        self._stores.append(store)

    async def refresh(self) -> None:
        """Read the watched gauges now (a source that fails is logged and skipped)."""
        if self._apps:
            self.lag.clear()
            self.dead_letters.clear()
        for app in self._apps:
            await _guarded(self._refresh_bus(app))
        for outbox in self._outboxes:
            await _guarded(self._refresh_outbox(outbox))
        for store in self._stores:
            await _guarded(self._refresh_sagas(store))

    async def _refresh_bus(self, app: App) -> None:
        # Every query at once: on a broker that finds a stream's end by waiting for it to
        # stay quiet (amqp://), each one costs that wait, and a scrape would add them up.
        lags, topics = await asyncio.gather(app.lag(), app.transport.describe_topics())
        for p in lags:
            self.lag.labels(p.group, p.topic, str(p.partition)).set(p.lag)
        dlqs = [info.name for info in topics if info.name.endswith(".dlq")]
        for dlq, pending in zip(dlqs, await asyncio.gather(
                *(_pending(app, dlq) for dlq in dlqs)), strict=True):
            if pending is not None:
                self.dead_letters.labels(dlq[: -len(".dlq")]).set(pending)
        transport = app.transport
        for topic, count in transport.dead_letters_trimmed().items():
            seen = self._trimmed_seen.get((id(transport), topic), 0)
            if count > seen:
                self._trimmed_seen[(id(transport), topic)] = count
                self.dead_letters_trimmed.labels(topic.removesuffix(".dlq")).inc(count - seen)

    async def _refresh_outbox(self, outbox: Outbox) -> None:
        self.outbox_pending.labels().set(await outbox.pending())
        self.outbox_age.labels().set(await outbox.oldest_age() or 0.0)

    async def _refresh_sagas(self, store: SagaStore) -> None:
        for status, count in (await store.count_by_status()).items():
            self.sagas.labels(str(status)).set(count)


async def _pending(app: App, dlq: str) -> int | None:
    """How many dead letters of ``dlq`` are pending; None if it cannot be read now."""
    try:
        return len(await app.dead_letters(dlq).pending())
    except TidingsError:  # trimmed or unreadable meanwhile
        return None


async def _guarded(refresh: Awaitable[None]) -> None:
    try:
        await refresh
    except Exception as exc:  # a scrape must not fail because one source did
        log.warning("metrics: could not refresh a gauge: %r", exc)
