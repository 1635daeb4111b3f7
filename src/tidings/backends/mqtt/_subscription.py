"""A subscription: one MQTT session, its deliveries numbered, acknowledged on commit.

Each topic is one partition (``(topic, 0)``) owned by every member of a group at once:
the broker shares the messages of ``$share/GROUP/topic`` among the members' sessions.
MQTT has no offsets, so each delivery gets the next number of a per-subscription
sequence; ``commit`` sends the PUBACKs of the deliveries below the committed number,
only after their handlers finished (manual acknowledgement). Deliveries not yet
acknowledged when a member dies are sent again when its session resumes.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from collections.abc import Mapping, Sequence

from ..._errors import FencedError
from ..._records import Record, TopicPartition
from ..._waiting import wait_event
from ...ports import RebalanceListener, Subscription
from ._client import Connection
from ._convert import record_of
from ._outage import Outage
from ._settings import MqttSettings
from ._wire import Delivery

__all__ = ["MqttSubscription", "client_id_for"]


def client_id_for(settings: MqttSettings, group: str | None, topics: Sequence[str],
                  client: str) -> tuple[str, bool]:
    """The session's client id, and whether the session outlives a disconnect: only a
    named member's (``?member=``) does, so a restart under that name resumes it."""
    if group is None or settings.member is None:
        return f"tidings/{group or '-'}/{client}/{_digest(topics)}", False
    return f"tidings/{group}/{settings.member}/{_digest(topics)}", True


def _digest(topics: Sequence[str]) -> str:
    return f"{zlib.crc32(','.join(sorted(topics)).encode()):08x}"


class MqttSubscription(Subscription):
    """A group member (shared subscriptions) or a group-less reader of ``topics``."""

    def __init__(self, settings: MqttSettings, group: str | None, topics: Sequence[str],
                 listener: RebalanceListener, client: str, outage: Outage | None = None,
                 ) -> None:
        self._settings = settings
        self._outage = outage
        self._listener = listener
        self._filters = [t if group is None else f"$share/{group}/{t}" for t in topics]
        self._tps = frozenset(TopicPartition(t, 0) for t in topics)
        self._client_id, self._persistent = client_id_for(settings, group, topics, client)
        self._connection: Connection | None = None
        self._inbox: deque[Record] = deque()
        self._unacked: dict[str, deque[tuple[int, int]]] = {t: deque() for t in topics}
        self._arrived = asyncio.Event()
        self._next = 0
        self._assigned = False
        self._changed = False  # the connection was lost (and maybe made again)

    @property
    def client_id(self) -> str:
        """The MQTT client id of this member's session."""
        return self._client_id

    async def fetch(self, max_records: int, timeout: float,
                    max_bytes: int | None = None) -> list[Record]:
        """Connect and subscribe on the first call; then up to ``max_records`` deliveries
        (values of at most ``max_bytes`` in all, or one; the rest wait for the next
        fetch: what the broker sends ahead is bounded by its in-flight window)."""
        if self._connection is None:
            await self._open()
        if not self._changed and not self._inbox:
            self._arrived.clear()
            await wait_event(self._arrived, timeout)
        if self._changed:  # lost (and maybe back): the runtime hears of it first
            await self._rejoin()
        if not self._assigned:  # lost, not back yet: wait for news, not in a loop
            self._arrived.clear()
            await wait_event(self._arrived, timeout)
            return []
        inbox = self._inbox
        count = min(max_records, len(inbox))
        if max_bytes is None:
            return [inbox.popleft() for _ in range(count)]
        out: list[Record] = []
        while inbox and len(out) < count:
            if out and len(inbox[0].value) > max_bytes:
                break
            record = inbox.popleft()
            max_bytes -= len(record.value)
            out.append(record)
        return out

    async def _open(self) -> None:
        # Kept before connecting: a resumed session's deliveries come with the CONNACK.
        self._connection = connection = Connection(
            self._settings, self._client_id, persistent=self._persistent,
            outage=self._outage, on_message=self._deliver, on_state=self._state)
        try:
            await connection.connect()
            await connection.subscribe(self._filters)
        except BaseException:
            connection.abandon()
            self._connection = None
            self._forget_deliveries()
            raise
        self._assigned = True
        await self._listener.on_assigned(self._tps)

    def _deliver(self, message: Delivery) -> None:
        waiting = self._unacked.get(message.topic)
        if waiting is None:  # not subscribed here (a session's leftover): nobody's
            if self._connection is not None:
                self._connection.ack(message.mid)
            return
        offset = self._next
        self._next = offset + 1
        waiting.append((offset, message.mid))
        self._inbox.append(record_of(message, offset))
        self._arrived.set()

    def _state(self, up: bool) -> None:
        """Deliveries of a lost connection will come again: forget them (the runtime
        drops their work in ``on_lost``)."""
        self._changed = True
        if not up:
            self._forget_deliveries()
        self._arrived.set()

    def _forget_deliveries(self) -> None:
        self._inbox.clear()
        for waiting in self._unacked.values():
            waiting.clear()

    async def _rejoin(self) -> None:
        self._changed = False
        if self._assigned:
            self._assigned = False
            await self._listener.on_lost(self._tps)
        connection = self._connection
        if connection is not None and connection.connected:
            try:
                await connection.subscribe(self._filters)  # the session may have expired
            except BaseException:
                self._changed = True  # the next fetch tries again
                raise
            self._assigned = True
            await self._listener.on_assigned(self._tps)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Acknowledge every delivery of each partition below its committed offset."""
        connection = self._connection
        for tp, upto in offsets.items():
            if not self._assigned or tp not in self._tps or connection is None:
                raise FencedError(f"{tp.topic!r}: this member's session was lost")
            waiting = self._unacked[tp.topic]
            while waiting and waiting[0][0] < upto:
                connection.ack(waiting.popleft()[1])

    def assignment(self) -> frozenset[TopicPartition]:
        """Every subscribed topic's one partition, while the session is up."""
        return self._tps if self._assigned else frozenset()

    async def close(self) -> None:
        """Let the runtime finish and commit, then disconnect; a named member's
        session stays with the broker until it comes back or expires."""
        if self._assigned:
            await self._listener.on_revoked(self._tps)
            self._assigned = False
        if self._connection is not None:
            await self._connection.close()

    def abandon(self) -> None:
        """Drop the connection without a word, as a crash would."""
        self._assigned = False
        if self._connection is not None:
            self._connection.abandon()
