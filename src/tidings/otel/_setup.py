"""Export set up from the standard ``OTEL_*`` environment variables."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from .._redact import redact_url

__all__ = ["configure_tracing"]

log = logging.getLogger("tidings.otel")

#: The OTLP exporter's own loggers: one line per failed batch and per retry; we say it
#: once instead (see _OneWarning).
_NOISY = ("opentelemetry.exporter.otlp.proto.http.trace_exporter",
          "opentelemetry.exporter.otlp.proto.http", "opentelemetry.sdk.trace.export")


def configure_tracing(
    service_name: str, *, exporter: SpanExporter | None = None,
    environ: Mapping[str, str] | None = None,
) -> TracerProvider | None:
    """Install a global tracer provider that exports spans, when the environment asks
    for it; return it, or None when tracing is not configured (then add no tracing
    middleware: nothing is exported and nothing is paid).

    Tracing is on when ``exporter`` is given, or when ``OTEL_EXPORTER_OTLP_ENDPOINT``
    or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (spans go by OTLP over HTTP,
    configured by the other standard ``OTEL_EXPORTER_OTLP_*`` variables), unless
    ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``. ``service_name``
    becomes the ``service.name`` resource attribute unless ``OTEL_SERVICE_NAME`` is
    set; ``OTEL_RESOURCE_ATTRIBUTES`` adds more. Spans are batched
    (``OTEL_BSP_*``) and exported off the event loop; an endpoint that does not answer
    costs one warning, and its spans are dropped.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    if exporter is None:
        if env.get("OTEL_TRACES_EXPORTER", "otlp").lower() == "none":
            return None
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") \
            or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if not endpoint:
            return None
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = _OneWarning(OTLPSpanExporter(), endpoint)
        for name in _NOISY:
            logging.getLogger(name).setLevel(logging.CRITICAL)
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


class _OneWarning(SpanExporter):
    """An exporter that logs one warning when its endpoint stops answering (and one
    line when it answers again), instead of a line per batch and per retry."""

    def __init__(self, inner: SpanExporter, endpoint: str) -> None:
        self._inner = inner
        self._endpoint = endpoint
        self._failing = False
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Export through the inner exporter; a failure drops the batch."""
        try:
            result = self._inner.export(spans)
        except Exception:
            result = SpanExportResult.FAILURE
        with self._lock:
            failing = result is not SpanExportResult.SUCCESS
            if failing and not self._failing:
                log.warning("spans cannot be exported to %s; dropping them until it "
                            "answers", redact_url(self._endpoint))
            elif self._failing and not failing:
                log.warning("spans are exported to %s again", redact_url(self._endpoint))
            self._failing = failing
        return result

    def shutdown(self) -> None:
        """Shut the inner exporter down."""
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush the inner exporter."""
        return self._inner.force_flush(timeout_millis)
