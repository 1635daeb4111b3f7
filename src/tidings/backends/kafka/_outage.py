"""Whether the Kafka cluster is reachable: one log line when an outage starts, one when
it ends, and a probe with capped backoff in between.

librdkafka reconnects by itself (``reconnect.backoff.max.ms``) and reports every failed
try through ``error_cb``; tidings logs those at debug level. What an operator wants is
the outage itself: it starts when a client reports that every broker is down
(``_ALL_BROKERS_DOWN``), and a metadata request probes the cluster, retried with a
backoff doubling from 0.5 s to 5 s, until it answers again. (Each client reports on its
own; a report that comes within 2 s of the end of an outage may be a late one, and is
logged only if a probe fails too.) Then ``on_back`` runs: the transport renews
what a broker restart can leave stale (see ``KafkaTransport._recovered``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from confluent_kafka import KafkaError

from ..._errors import TransportError

__all__ = ["Reachability"]

log = logging.getLogger("tidings.kafka")

_FIRST_WAIT = 0.5  # seconds before the first probe; doubled after each failure
_MAX_WAIT = 5.0
_QUIET = 2.0  # seconds after an outage ended in which a report is probed before logged


class Reachability:
    """Outage state, fed by librdkafka's ``error_cb`` (from any thread)."""

    def __init__(self, servers: str, probe: Callable[[], Awaitable[object]],
                 on_back: Callable[[], Awaitable[None]]) -> None:
        self._servers = servers
        self._probe = probe
        self._on_back = on_back
        self._since: float | None = None  # time.monotonic() the outage started
        self._suspected = False  # a client reported every broker down: probe
        self._suspected_at = 0.0
        self._quiet_until = 0.0  # reports before this are late ones: logged if a probe fails
        self._why = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._probing: asyncio.Task[None] | None = None
        self._closed = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Probe on ``loop`` when an outage starts."""
        self._loop = loop

    def error(self, error: KafkaError) -> None:
        """librdkafka's ``error_cb`` (any thread): every broker is down for one client."""
        if error.code() != KafkaError._ALL_BROKERS_DOWN:
            return
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing to probe
                loop.call_soon_threadsafe(self._suspect, error.str())

    def _suspect(self, why: str) -> None:
        """An outage starts (logged now), unless the report comes just after one ended:
        a client's late report, for a connection another client already found again,
        is only logged if a probe fails too. Either way the cluster is probed."""
        if self._closed:
            return  # a client's late report, after the transport closed
        now = time.monotonic()
        if self._since is None and not self._suspected:
            self._suspected_at, self._why = now, why
            if now >= self._quiet_until:
                self._begin(now)
        self._suspected = True
        if self._probing is None or self._probing.done():
            self._probing = asyncio.get_running_loop().create_task(
                self._probe_until_back(), name="tidings-kafka-probe")

    def _begin(self, since: float) -> None:
        self._since = since
        log.warning("Kafka at %s is unreachable (%s): reconnecting; appends wait up to "
                    "publish_timeout", self._servers, self._why)

    async def _probe_until_back(self) -> None:
        """Probe until the cluster answers; then end the outage (if one was logged) and
        run ``on_back`` (whatever the probe found first: a broker that restarted within
        the probe's timeout still left stale clients behind)."""
        wait = _FIRST_WAIT
        while self._suspected:
            self._suspected = False
            try:
                await self._probe()
            except TransportError:
                self._suspected = True
                if self._since is None:
                    self._begin(self._suspected_at)
                await asyncio.sleep(wait)
                wait = min(wait * 2, _MAX_WAIT)
                continue
            since, self._since = self._since, None
            self._quiet_until = time.monotonic() + _QUIET
            if since is not None:
                log.warning("Kafka at %s is reachable again after %.1f s", self._servers,
                            time.monotonic() - since)
            try:
                await self._on_back()
            except TransportError as exc:
                log.warning("after Kafka came back: %s", exc)

    async def close(self) -> None:
        """Stop probing."""
        self._closed = True
        probing, self._probing = self._probing, None
        if probing is not None:
            probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probing
