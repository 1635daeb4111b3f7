"""Parsing and validation of ``sqlite:///path?option=value`` URLs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from ..._errors import ConfigurationError
from ..._redact import redact_url

__all__ = ["DEFAULT_MAX_RECORD_BYTES", "SqliteOptions", "parse_url"]

_KNOWN = ("partitions", "session_timeout", "heartbeat", "retention_hours", "retention_bytes",
          "max_record_bytes", "dlq_retention_hours", "mode")
#: The largest record an embedded bus accepts by default (8 MiB): a bigger one is
#: refused at publish, so a subscriber never has to hold one it cannot afford.
DEFAULT_MAX_RECORD_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SqliteOptions:
    """Settings of one SQLite transport, validated when built from a URL."""

    path: Path
    partitions: int = 4
    session_timeout: float = 3.0
    heartbeat: float = 0.5
    retention_hours: float = 168.0
    retention_bytes: int = 0
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    #: Dead-letter topics (``*.dlq``): 0 keeps their entries until resolved.
    dlq_retention_hours: float = 0.0
    #: How often retention runs (seconds); not a URL option, tests shorten it.
    retention_interval: float = 30.0
    #: ``mode=ro``: open an existing bus read-only (for inspection): nothing is created,
    #: written, checkpointed or deleted, and a missing file is an error.
    read_only: bool = False


def parse_url(url: str) -> SqliteOptions:
    """Build options from ``sqlite:///relative.db`` or ``sqlite:////abs/path.db``."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigurationError(f"not a sqlite:// URL: {redact_url(url)!r}")
    if parts.netloc:
        raise ConfigurationError(
            f"sqlite URL {redact_url(url)!r} names a host; use sqlite:///relative/path.db "
            "or sqlite:////absolute/path.db"
        )
    path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not path or path.endswith("/") or path == ":memory:":
        raise ConfigurationError(
            f"sqlite URL {redact_url(url)!r} needs a database file path (for a throwaway bus "
            "use memory://)"
        )
    options = _query_options(url, parts.query)
    mode = options.get("mode", "rw")
    if mode not in ("ro", "rw"):
        raise ConfigurationError(f"sqlite:// option mode={mode!r} is not ro or rw")
    session_timeout = _number(options, "session_timeout", 3.0, minimum=0.05)
    heartbeat = _number(options, "heartbeat", session_timeout / 6, minimum=0.01)
    if heartbeat >= session_timeout:
        raise ConfigurationError(
            f"sqlite option heartbeat={heartbeat} must be below session_timeout={session_timeout}"
        )
    return SqliteOptions(
        path=Path(path),
        partitions=int(_number(options, "partitions", 4, minimum=1, integer=True)),
        session_timeout=session_timeout,
        heartbeat=heartbeat,
        retention_hours=_number(options, "retention_hours", 168.0, minimum=0.0),
        retention_bytes=int(_number(options, "retention_bytes", 0, minimum=0, integer=True)),
        max_record_bytes=int(_number(options, "max_record_bytes", DEFAULT_MAX_RECORD_BYTES,
                                     minimum=1024, integer=True)),
        dlq_retention_hours=_number(options, "dlq_retention_hours", 0.0, minimum=0.0),
        read_only=mode == "ro",
    )


def _query_options(url: str, query: str) -> dict[str, str]:
    try:
        raw = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise ConfigurationError(f"malformed query string in {redact_url(url)!r}: {exc}") from None
    unknown = sorted(set(raw) - set(_KNOWN))
    if unknown:
        raise ConfigurationError(
            f"unknown sqlite:// option(s) {', '.join(unknown)}; known: {', '.join(_KNOWN)}"
        )
    repeated = sorted(name for name, values in raw.items() if len(values) > 1)
    if repeated:
        raise ConfigurationError(f"sqlite:// option(s) given twice: {', '.join(repeated)}")
    return {name: values[0] for name, values in raw.items()}


def _number(
    options: dict[str, str], name: str, default: float, *, minimum: float, integer: bool = False
) -> float:
    text = options.get(name)
    if text is None:
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ConfigurationError(f"sqlite:// option {name}={text!r} is not {kind}") from None
    if not math.isfinite(value) or value < minimum:
        raise ConfigurationError(f"sqlite:// option {name}={text!r} must be >= {minimum}")
    return value
