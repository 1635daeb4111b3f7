"""Prometheus metrics for tidings: the metrics middleware over prometheus-client.

``pip install 'tidings[prometheus]'``::

    metrics = PrometheusMetrics()
    app.add_middleware(metrics)
    metrics.watch(app)                 # lag per partition, dead letters pending
    metrics.watch_outbox(outbox)       # rows pending, age of the oldest
    metrics.watch_sagas(saga_store)    # sagas by status

    @api.get("/metrics")
    async def scrape() -> Response:
        return Response(await metrics.render(), media_type=CONTENT_TYPE)

Counters and histograms are updated as messages flow; the gauges that need a query
(lag, outbox, sagas, dead letters) are refreshed by :meth:`PrometheusMetrics.render`, so
they cost nothing between scrapes. Every metric lives in ``metrics.registry`` (its own,
unless one is given). The metrics are listed in :mod:`tidings._metrics` and
docs/observability.md; counters get Prometheus' ``_total`` suffix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
except ImportError as exc:  # pragma: no cover
    from ._errors import MissingDependencyError

    raise MissingDependencyError("tidings.prometheus", "prometheus") from exc

from ._metrics import Instrument, MetricsMiddleware

__all__ = ["CONTENT_TYPE", "PrometheusMetrics"]


class PrometheusMetrics(MetricsMiddleware):
    """The metrics middleware recording into a prometheus-client registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        super().__init__(_PrometheusSink(self.registry))

    async def render(self) -> bytes:
        """Refresh, then the registry in the Prometheus text format (``CONTENT_TYPE``)."""
        await self.refresh()
        return generate_latest(self.registry)


class _PrometheusSink:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def counter(self, name: str, doc: str, labels: Sequence[str]) -> Instrument:
        return _labelled(Counter(name, doc, labels, registry=self._registry), labels)

    def histogram(self, name: str, doc: str, labels: Sequence[str]) -> Instrument:
        return _labelled(Histogram(name, doc, labels, registry=self._registry), labels)

    def gauge(self, name: str, doc: str, labels: Sequence[str]) -> Instrument:
        return _labelled(Gauge(name, doc, labels, registry=self._registry), labels)


class _Unlabelled:
    """A metric without labels: prometheus-client refuses ``labels()`` on it."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric

    def labels(self, *values: str) -> Any:
        return self._metric

    def clear(self) -> None:
        """Nothing to forget."""


def _labelled(metric: Any, labels: Sequence[str]) -> Instrument:
    return metric if labels else _Unlabelled(metric)
