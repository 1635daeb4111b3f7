"""The metrics middleware over the OpenTelemetry metrics API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics

from .. import __version__
from .._metrics import Instrument, MetricsMiddleware

if TYPE_CHECKING:
    from .._app import App

__all__ = ["OtelMetrics"]


class OtelMetrics(MetricsMiddleware):
    """The metrics of :mod:`tidings._metrics` recorded as OpenTelemetry instruments of
    ``meter_provider`` (default: the global one), for an OTLP or any other exporter.
    Counters and histograms are recorded as messages flow; the gauges that need a query
    (lag, dead letters, outbox, sagas) are refreshed every ``refresh_interval`` seconds
    while a watched app runs."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None, *,
                 refresh_interval: float = 15.0) -> None:
        meter = metrics.get_meter("tidings", __version__, meter_provider=meter_provider)
        super().__init__(_OtelSink(meter))
        self.refresh_interval = refresh_interval
        self._refresher: asyncio.Task[None] | None = None

    def watch(self, app: App) -> None:
        """Report ``app``'s lag and dead letters, refreshed while it runs."""
        super().watch(app)
        app.on_startup(self._start)
        app.on_shutdown(self._stop)

    async def _start(self) -> None:
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_loop(),
                                                  name="tidings-metrics-refresh")

    async def _stop(self) -> None:
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher

    async def _refresh_loop(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.refresh_interval)


class _OtelSink:
    def __init__(self, meter: metrics.Meter) -> None:
        self._meter = meter

    def counter(self, name: str, doc: str, labels: Sequence[str]) -> Instrument:
        counter = self._meter.create_counter(name, description=doc)
        return _Instrument(labels, lambda attrs: _Counted(counter, attrs))

    def histogram(self, name: str, doc: str, labels: Sequence[str]) -> Instrument:
        histogram = self._meter.create_histogram(name, unit="s", description=doc)
        return _Instrument(labels, lambda attrs: _Observed(histogram, attrs))

    def gauge(self, name: str, doc: str, labels: Sequence[str]) -> Instrument:
        gauge = self._meter.create_gauge(name, description=doc)
        return _Instrument(labels, lambda attrs: _Level(gauge, attrs))


class _Instrument:
    """Children by label values, each bound to its attributes."""

    def __init__(self, names: Sequence[str], make: Any) -> None:
        self._names = tuple(names)
        self._make = make
        self._children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._make(dict(zip(self._names, values,
                                                                 strict=True)))
        return child

    def clear(self) -> None:
        """OpenTelemetry gauges keep the last value of each attribute set."""


class _Counted:
    __slots__ = ("_attrs", "_counter")

    def __init__(self, counter: metrics.Counter, attrs: dict[str, str]) -> None:
        self._counter, self._attrs = counter, attrs

    def inc(self, amount: float = 1) -> None:
        self._counter.add(amount, self._attrs)


class _Observed:
    __slots__ = ("_attrs", "_histogram")

    def __init__(self, histogram: metrics.Histogram, attrs: dict[str, str]) -> None:
        self._histogram, self._attrs = histogram, attrs

    def observe(self, value: float) -> None:
        self._histogram.record(value, self._attrs)


class _Level:
    __slots__ = ("_attrs", "_gauge", "_value")

    def __init__(self, gauge: metrics._Gauge, attrs: dict[str, str]) -> None:
        self._gauge, self._attrs, self._value = gauge, attrs, 0.0

    def set(self, value: float) -> None:
        self._value = value
        self._gauge.set(value, self._attrs)

    def inc(self, amount: float = 1) -> None:
        self.set(self._value + amount)

    def dec(self, amount: float = 1) -> None:
        self.set(self._value - amount)
