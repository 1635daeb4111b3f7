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

from ..._errors import ConfigurationError, MessageTooLargeError, TransportError
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

    async def start(self) -> None:
        """Connect the publishing connection (a session of its own)."""
        if self._publisher is None:
            publisher = Connection(self.settings, f"tidings/pub/{uuid.uuid4().hex}",
                                   persistent=False)
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
        """Publish each record at QoS 1; return once the broker acknowledged them all."""
        publisher = self._publisher
        if publisher is None:
            raise TransportError("the mqtt transport is not started")
        now = time.time()
        futures = []
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
        timeout = self.settings.publish_timeout
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*futures)
        except TimeoutError:
            raise TransportError(
                f"{publisher.where}: no PUBACK within {timeout:g} s (publish_timeout)"
            ) from None
        return [Position(record.topic, 0, None) for record in records]

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
                                client or uuid.uuid4().hex[:12])

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        """Refused: a broker keeps no log to read from."""
        raise refused(f"read {topic!r} from an offset", Capability.REPLAY.value)

    async def describe_topics(self) -> list[TopicInfo]:
        """Nothing: MQTT topics have no offsets to describe."""
        return []

    async def describe_groups(self) -> list[GroupInfo]:
        """Nothing: shared subscriptions have no committed offsets to describe."""
        return []

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
