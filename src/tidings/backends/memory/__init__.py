"""``memory://[name][?partitions=4&session_timeout=3]``: an in-process log for tests.

Transports that name the same broker in one process share it; ``memory://`` alone is
the process's default broker. Nothing survives the process.
"""

from __future__ import annotations

import weakref
from urllib.parse import parse_qs, urlsplit

from ..._errors import ConfigurationError
from ..._redact import redact_url
from ._broker import MemoryBroker
from ._transport import MemorySubscription, MemoryTransport

__all__ = ["MemoryBroker", "MemorySubscription", "MemoryTransport", "from_url"]

# Brokers live as long as a transport uses them; the URL names them within the process.
_BROKERS: weakref.WeakValueDictionary[str, MemoryBroker] = weakref.WeakValueDictionary()


def from_url(url: str) -> MemoryTransport:
    """Build a transport on the broker the URL names, creating it on first use."""
    parts = urlsplit(url)
    name = parts.netloc + parts.path
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(options) - {"partitions", "session_timeout"}
    if unknown:
        raise ConfigurationError(f"unknown memory:// option(s): {', '.join(sorted(unknown))}")
    try:
        partitions = int(options.get("partitions", 4))
        session_timeout = float(options.get("session_timeout", 3.0))
    except ValueError as exc:
        raise ConfigurationError(
            f"invalid memory:// option in {redact_url(url)!r}: {exc}") from None
    if partitions < 1 or session_timeout <= 0:
        raise ConfigurationError("memory:// needs partitions >= 1 and session_timeout > 0")
    broker = _BROKERS.get(name)
    if broker is None:
        broker = _BROKERS[name] = MemoryBroker(partitions, session_timeout)
    return MemoryTransport(broker)
