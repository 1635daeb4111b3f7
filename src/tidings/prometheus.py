"""Prometheus metrics for tidings: a middleware, plus gauges read when scraped.

``pip install 'tidings[prometheus]'``::

    metrics = PrometheusMetrics()
    app.add_middleware(metrics)
    metrics.watch(app)                 # lag per partition, dead letters pending
    metrics.watch_outbox(outbox)       # rows pending, age of the oldest
    metrics.watch_sagas(saga_store)    # sagas by status

    @api.get("/metrics")
    async def scrape() -> Response:
        return Response(await metrics.render(), media_type=CONTENT_TYPE)

Counters and histograms are updated by the middleware as messages flow; the gauges
that need a query (lag, outbox, sagas, dead letters) are refreshed by :meth:`render`
(or :meth:`refresh`), so they cost nothing between scrapes. Every metric lives in
``metrics.registry`` (its own, unless one is given). Metrics, by name:

``tidings_messages_consumed_total``, ``_handled_total``, ``_failed_total``,
``_retried_total``, ``_dead_lettered_total`` (labels topic, group, handler):
deliveries to a handler, successes, failed attempts, and what followed them;
``tidings_handler_duration_seconds`` (histogram); ``tidings_handlers_in_flight``;
``tidings_messages_published_total`` (topic, kind) and
``tidings_publish_duration_seconds`` (kind); ``tidings_consumer_lag`` (group, topic,
partition); ``tidings_dead_letters_pending`` (topic); ``tidings_outbox_pending``,
``tidings_outbox_oldest_age_seconds``; ``tidings_sagas`` (status).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
except ImportError as exc:  # pragma: no cover
    from ._errors import MissingDependencyError

    raise MissingDependencyError("tidings.prometheus", "prometheus") from exc

from ._errors import TidingsError
from ._middleware import AppendCall, AppendNext, CallNext, HandlerCall, Middleware
from ._records import Position

if TYPE_CHECKING:
    from ._app import App
    from .saga import SagaStore
    from .sqlalchemy import Outbox

__all__ = ["CONTENT_TYPE", "PrometheusMetrics"]

log = logging.getLogger("tidings.prometheus")
_HANDLER = ("topic", "group", "handler")


class PrometheusMetrics(Middleware):
    """Counts what an app's handlers and appends do; see the module for the metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.consumed = Counter("tidings_messages_consumed", "Deliveries to a handler "
                                "(every attempt)", _HANDLER, registry=r)
        self.handled = Counter("tidings_messages_handled", "Deliveries handled without "
                               "error", _HANDLER, registry=r)
        self.failed = Counter("tidings_messages_failed", "Deliveries whose handler raised",
                              _HANDLER, registry=r)
        self.retried = Counter("tidings_messages_retried", "Failed deliveries to be "
                               "retried", _HANDLER, registry=r)
        self.dead_lettered = Counter("tidings_messages_dead_lettered", "Failed deliveries "
                                     "sent to the dead letters", _HANDLER, registry=r)
        self.duration = Histogram("tidings_handler_duration_seconds", "Handler call "
                                  "duration", _HANDLER, registry=r)
        self.in_flight = Gauge("tidings_handlers_in_flight", "Handler calls running now",
                               _HANDLER, registry=r)
        self.published = Counter("tidings_messages_published", "Messages appended to the "
                                 "bus", ("topic", "kind"), registry=r)
        self.publish_duration = Histogram("tidings_publish_duration_seconds", "Append "
                                          "duration (until durable)", ("kind",), registry=r)
        self.lag = Gauge("tidings_consumer_lag", "End offset minus committed offset",
                         ("group", "topic", "partition"), registry=r)
        self.dead_letters = Gauge("tidings_dead_letters_pending", "Dead letters not "
                                  "re-driven or purged", ("topic",), registry=r)
        self.outbox_pending = Gauge("tidings_outbox_pending", "Outbox rows not yet "
                                    "relayed", registry=r)
        self.outbox_age = Gauge("tidings_outbox_oldest_age_seconds", "Age of the oldest "
                                "outbox row not yet relayed", registry=r)
        self.sagas = Gauge("tidings_sagas", "Saga instances by status", ("status",),
                           registry=r)
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

    # -- gauges read when scraped --------------------------------------------------

    def watch(self, app: App) -> None:
        """Report ``app``'s lag per partition and the dead letters pending on the bus."""
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
            await self._guarded(self._refresh_bus(app))
        for outbox in self._outboxes:
            await self._guarded(self._refresh_outbox(outbox))
        for store in self._stores:
            await self._guarded(self._refresh_sagas(store))

    async def render(self) -> bytes:
        """Refresh, then the registry in the Prometheus text format (``CONTENT_TYPE``)."""
        await self.refresh()
        return generate_latest(self.registry)

    async def _guarded(self, refresh: Any) -> None:
        try:
            await refresh
        except Exception as exc:  # a scrape must not fail because one source did
            log.warning("metrics: could not refresh a gauge: %r", exc)

    async def _refresh_bus(self, app: App) -> None:
        for p in await app.lag():
            self.lag.labels(p.group, p.topic, str(p.partition)).set(p.lag)
        for info in await app.transport.describe_topics():
            if info.name.endswith(".dlq"):
                try:
                    pending = await app.dead_letters(info.name).pending()
                except TidingsError:  # trimmed or unreadable meanwhile
                    continue
                self.dead_letters.labels(info.name[: -len(".dlq")]).set(len(pending))

    async def _refresh_outbox(self, outbox: Outbox) -> None:
        self.outbox_pending.set(await outbox.pending())
        self.outbox_age.set(await outbox.oldest_age() or 0.0)

    async def _refresh_sagas(self, store: SagaStore) -> None:
        for status, count in (await store.count_by_status()).items():
            self.sagas.labels(str(status)).set(count)
