"""librdkafka's log lines, through Python ``logging``.

librdkafka retries connections and requests by itself and logs each failed try (an
unreachable broker logs ``FAIL`` about 20 times a second, at error level). What finally
fails reaches the caller as one tidings error, so those tries are logged at debug level
under ``tidings.kafka.librdkafka``; anything else keeps librdkafka's own level.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["DriverLog"]

#: librdkafka log facilities of tries it repeats by itself (connects, timed-out requests).
RETRIED = frozenset({"FAIL", "BROKERFAIL", "CONNECT", "DISCONNECT", "REQTMOUT", "RETRY",
                     "TIMEOUT", "ERROR"})


class DriverLog:
    """What confluent-kafka's ``logger`` setting calls: ``log(level, fmt, facility, name,
    text)``, as a :class:`logging.Logger` is called."""

    def __init__(self, logger: logging.Logger,
                 watch: Mapping[str, Callable[[str], bool]] | None = None) -> None:
        self.logger = logger
        #: Called with the text of each line librdkafka logs under one of these
        #: facilities (it has no other signal for some events, such as a broker that
        #: forgot our producer id); a line the callback returns True for was handled,
        #: and is logged at debug level.
        self.watch = watch or {}

    def log(self, level: int, msg: str, *args: Any) -> None:
        """Log one librdkafka line, at debug level when it reports a try to be repeated."""
        facility = args[0] if args else ""
        if self.watch:
            seen = self.watch.get(facility)
            if seen is not None and seen(str(args[-1]) if args else "") and level > 0:
                level = logging.DEBUG
        if facility in RETRIED:
            level = logging.DEBUG
        if self.logger.isEnabledFor(level):
            self.logger.log(level, msg, *args)
