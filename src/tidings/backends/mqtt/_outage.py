"""Whether one transport's broker is reachable: the state behind ``App.health()`` and
the two log lines of an outage.

Each of a transport's connections (its publisher, each subscription) reports here when
it is lost and when it is made again. The first loss logs one warning, the last
recovery one more with the outage's length; the reconnect attempts in between log
nothing (a broker down for an hour would otherwise fill the log).
"""

from __future__ import annotations

import logging
import time

__all__ = ["Outage"]

log = logging.getLogger("tidings.mqtt")


class Outage:
    """The connections of one transport that are down, and since when."""

    def __init__(self, where: str) -> None:
        self.where = where  # the broker's URL, password redacted
        self._down: set[str] = set()
        self._since = 0.0
        #: How many outages began so far (a publish that timed out across one of them
        #: reports the broker unavailable, not a slow acknowledgement).
        self.count = 0

    @property
    def down(self) -> bool:
        """Whether some connection is lost and not made again yet."""
        return bool(self._down)

    def seconds(self) -> float:
        """How long the current outage has lasted (0 when there is none)."""
        return time.monotonic() - self._since if self._down else 0.0

    def lost(self, client_id: str, reason: str) -> None:
        """Connection ``client_id`` was lost; the background reconnects begin."""
        if not self._down:
            self._since = time.monotonic()
            self.count += 1
            log.warning("%s: broker unreachable (%s); reconnecting in the background, "
                        "publishes wait up to publish_timeout", self.where, reason)
        self._down.add(client_id)

    def back(self, client_id: str) -> None:
        """Connection ``client_id`` is made again."""
        if client_id in self._down:
            took = self.seconds()
            self._down.discard(client_id)
            if not self._down:
                log.warning("%s: broker reachable again, every connection back after an "
                            "outage of %.1f s", self.where, took)

    def forget(self, client_id: str) -> None:
        """Connection ``client_id`` is closed for good: no longer waited for."""
        self._down.discard(client_id)
