"""The MQTT transport: QoS 1 publishes confirmed by PUBACK, groups as shared subscriptions.

What MQTT cannot do is refused by name (:func:`~._translate.refused`): a broker keeps no
log, so there is nothing to read back, replay, reset or look up by time; a delayed
publish has nowhere to wait durably; and the members of a group share messages in turn,
so order per key holds only within one member. See ``docs/mqtt.md``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence

from ..._errors import (
    BrokerUnavailableError,
    ConfigurationError,
    MessageTooLargeError,
    TransportError,
)
from ..._records import (
    GroupInfo,
    OutRecord,
    Position,
    Record,
    Start,
    TopicInfo,
    TopicPartition,
)
from ...ports import Capability, RebalanceListener, Transport
from ._client import Connection
from ._convert import properties_of
from ._outage import Outage
from ._settings import MqttSettings
from ._subscription import MqttSubscription
from ._translate import refused

__all__ = ["MqttTransport"]

_WILD = ("+", "#", "/", "\0")
#: Bytes of a PUBLISH beyond its payload and properties (fixed header, topic, id).
_OVERHEAD = 16


class MqttTransport(Transport):
    """A transport over an MQTT 5 broker (mosquitto 2.0 and later)."""

    system = "mqtt"
    capabilities = frozenset({Capability.GROUPS})
    shared_between_processes = True

    def __init__(self, settings: MqttSettings) -> None:
        self.settings = settings
        self._publisher: Connection | None = None
        #: Shared by every connection of this transport: one log line per outage.
        self.outage = Outage(settings.where)

    async def start(self) -> None:
        """Connect the publishing connection (a session of its own)."""
        if self._publisher is None:
            publisher = Connection(self.settings, f"tidings/pub/{uuid.uuid4().hex}",
                                   persistent=False, outage=self.outage)
            await publisher.connect()
            self._publisher = publisher

    async def close(self) -> None:
        """Wait for unconfirmed publishes and disconnect. Idempotent."""
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.close()

    async def ensure_topic(self, topic: str, partitions: int | None = None) -> int:
        """MQTT topics need no creating: check the name; every topic has one partition."""
        _check_name("topic", topic, extra=("+", "#"))
        if partitions not in (None, 1):
            raise refused(f"give topic {topic!r} {partitions} partitions",
                          Capability.ORDER_PER_KEY.value, " (an MQTT topic is one stream)")
        return 1

    async def append(self, records: Sequence[OutRecord]) -> Sequence[Position]:
        """Publish each record at QoS 1; return once the broker acknowledged them all.
        While the broker is unreachable this waits (paho sends the records once the
        connection is made again), up to ``publish_timeout`` in all; then it raises
        :class:`~tidings.BrokerUnavailableError` (the records may still be delivered
        later: a retry can make a duplicate, never a loss)."""
        publisher = self._publisher
        if publisher is None:
            raise TransportError("the mqtt transport is not started")
        timeout, outages = self.settings.publish_timeout, self.outage.count
        futures: list[asyncio.Future[None]] = []
        try:
            async with asyncio.timeout(timeout):
                await self._send(publisher, records, futures)
                await asyncio.gather(*futures)
        except BaseException as exc:
            for future in futures:  # nobody waits for them now
                future.cancel()
            if not isinstance(exc, TimeoutError):
                raise
            if self.outage.down or self.outage.count != outages:
                raise BrokerUnavailableError(
                    f"{publisher.where}: broker unavailable, no PUBACK within {timeout:g} s "
                    "(publish_timeout); the message may still be delivered when it is back"
                ) from None
            raise TransportError(
                f"{publisher.where}: no PUBACK within {timeout:g} s (publish_timeout)"
            ) from None
        return [Position(record.topic, 0, None) for record in records]

    @staticmethod
    async def _send(publisher: Connection, records: Sequence[OutRecord],
                    futures: list[asyncio.Future[None]]) -> None:
        """Hand each record to the publisher as the window allows; collect its PUBACK
        futures in ``futures``."""
        now = time.time()
        for record in records:
            _check_record(record, now)
            props = properties_of(record)
            limit = publisher.max_packet
            if limit is not None:
                size = len(record.value) + len(props.pack()) + len(record.topic) + _OVERHEAD
                if size > limit:
                    raise MessageTooLargeError(
                        f"{publisher.where}: a message of {size} bytes to {record.topic!r} "
                        f"is larger than the broker's limit of {limit} bytes"
                    )
            if publisher.full:
                await publisher.room()
            futures.append(publisher.publish(record.topic, record.value, props))

    def subscribe(
        self,
        group: str | None,
        topics: Sequence[str],
        listener: RebalanceListener,
        *,
        start: Start = Start.EARLIEST,
        client: str = "",
    ) -> MqttSubscription:
        """A shared subscription in ``group`` (or a plain one) to ``topics``. A new group
        gets what is published from its subscription on (a broker keeps no history)."""
        if group is not None:
            _check_name("group", group, extra=_WILD)
        for topic in topics:
            _check_name("topic", topic, extra=("+", "#"))
        return MqttSubscription(self.settings, group, topics, listener,
                                client or uuid.uuid4().hex[:12], self.outage)

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        """Refused: a broker keeps no log to read from."""
        raise refused(f"read {topic!r} from an offset", Capability.REPLAY.value)

    async def describe_topics(self) -> list[TopicInfo]:
        """Nothing: MQTT topics have no offsets to describe. Raises
        :class:`~tidings.BrokerUnavailableError` while a connection is lost (so
        ``App.health()`` reports the outage)."""
        self._check_reachable()
        return []

    async def describe_groups(self) -> list[GroupInfo]:
        """Nothing: shared subscriptions have no committed offsets to describe. Raises
        :class:`~tidings.BrokerUnavailableError` while a connection is lost."""
        self._check_reachable()
        return []

    def _check_reachable(self) -> None:
        if self.outage.down:
            raise BrokerUnavailableError(
                f"{self.settings.where}: unreachable for {self.outage.seconds():.1f} s, "
                "reconnecting")

    async def set_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Refused: there are no offsets to reset (nothing to replay)."""
        raise refused(f"reset the offsets of group {group!r}", Capability.REPLAY.value)

    async def offsets_for_time(self, topic: str, timestamp: float) -> dict[int, int]:
        """Refused: a broker keeps no log to search by time."""
        raise refused(f"find offsets by time in {topic!r}", Capability.REPLAY.value)


def _check_record(record: OutRecord, now: float) -> None:
    if record.deliver_at is not None and record.deliver_at > now:
        raise refused("delay a message durably", Capability.DELAY.value,
                      " (publish it when it is due, or use a backend with 'delay')")
    if record.partition not in (None, 0):
        raise refused(f"publish to partition {record.partition} of {record.topic!r}",
                      Capability.ORDER_PER_KEY.value, " (an MQTT topic is one stream)")
    _check_name("topic", record.topic, extra=("+", "#"))


def _check_name(kind: str, name: str, *, extra: tuple[str, ...]) -> None:
    if not name or name.startswith("$") or any(c in name for c in (*extra, "\0")):
        raise ConfigurationError(
            f"bad MQTT {kind} name {name!r}: not empty, no leading '$', none of {extra}"
        )
