"""OpenTelemetry for tidings: traces of every send and process, across services.

``pip install 'tidings[otel]'``. Add :class:`TracingMiddleware` to an app and its
messages carry W3C trace context (``traceparent``, ``tracestate``) in their headers
through everything: publishes, the outbox (stamped when a row is recorded), requests
and replies, retries, dead letters, re-drives and delayed messages. Spans follow the
OpenTelemetry messaging semantic conventions: ``send orders`` (PRODUCER),
``process orders`` (CONSUMER, a child of the message's send span; a batch links every
message), ``create orders`` (an outbox row). :func:`configure_tracing` sets up export
from the standard ``OTEL_*`` environment variables (OTLP over HTTP)::

    from tidings.otel import TracingMiddleware, configure_tracing

    if configure_tracing("orders"):            # OTEL_EXPORTER_OTLP_ENDPOINT is set
        app.add_middleware(TracingMiddleware())

:class:`OtelMetrics` records tidings' metrics (see docs/observability.md) through the
OpenTelemetry metrics API instead of prometheus-client.
"""

from __future__ import annotations

try:
    import opentelemetry.sdk.trace  # noqa: F401  (the extra brings api and sdk)
    from opentelemetry import trace  # noqa: F401
except ImportError as exc:  # pragma: no cover
    from .._errors import MissingDependencyError

    raise MissingDependencyError("tidings.otel", "otel") from exc

from ._metrics import OtelMetrics
from ._setup import configure_tracing
from ._tracing import TracingMiddleware

__all__ = ["OtelMetrics", "TracingMiddleware", "configure_tracing"]
