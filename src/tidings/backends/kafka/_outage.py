"""Whether the Kafka cluster is reachable: one log line when an outage starts, one when
it ends, and a probe with capped backoff in between.

librdkafka reconnects by itself (``reconnect.backoff.max.ms``) and reports every failed
try through ``error_cb``; tidings logs those at debug level. What an operator wants is
the outage itself: when a client reports that every broker is down
(``_ALL_BROKERS_DOWN``), a metadata request probes the cluster; if it fails, the outage
is logged (as starting at that report), and the probe is retried with a backoff doubling
from 0.5 s to 5 s until it answers again. Then ``on_back`` runs: the transport renews
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
        """Probe the cluster (a client's report may be late, for a connection that
        another client already found again: only a failed probe starts an outage)."""
        if self._closed:
            return  # a client's late report, after the transport closed
        if not self._suspected and self._since is None:
            self._suspected_at = time.monotonic()
        self._suspected, self._why = True, why
        if self._probing is None or self._probing.done():
            self._probing = asyncio.get_running_loop().create_task(
                self._probe_until_back(), name="tidings-kafka-probe")

    async def _probe_until_back(self) -> None:
        wait = _FIRST_WAIT
        while self._suspected:
            self._suspected = False
            try:
                await self._probe()
            except TransportError:
                self._suspected = True
                if self._since is None:
                    self._since = self._suspected_at
                    log.warning("Kafka at %s is unreachable (%s): reconnecting; appends "
                                "wait up to publish_timeout", self._servers, self._why)
                await asyncio.sleep(wait)
                wait = min(wait * 2, _MAX_WAIT)
                continue
            since, self._since = self._since, None
            if since is None:
                continue  # a late report of an outage already over (or never noticed)
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
