"""The backend port: what a transport must do, and nothing more.

A transport is a partitioned, durable log with consumer groups (Kafka's model).
Everything else tidings offers (typed handlers, retries with backoff, dead letters,
request/reply, work queues, outbox relays) is built once, above this port, for every
backend. Each backend lives in ``tidings.backends.<scheme>`` and is loaded by name.

Semantics every transport must honour (the conformance suite,
:mod:`tidings.testing.conformance`, checks them on any backend):

* ``append`` returns only once the records are durable. Records with the same key go
  to the same partition and keep their order. ``deliver_at`` in the future keeps a
  record out of the log until then (durably), after which it is appended normally.
* ``subscribe(group=...)`` joins a consumer group: the group's live members split the
  partitions of the topics; each partition is owned by at most one member at a time.
  A member that stops heartbeating loses its partitions to the others.
* Before a member gives a partition up it awaits ``listener.on_revoked`` so the runtime
  can finish in-flight work and commit; ``on_lost`` is called instead when ownership
  was already lost (no commit is possible). Only then may another member get it: no two
  members hold one partition at once. ``commit`` of a partition the member no longer
  owns raises :class:`~tidings.FencedError`.
* ``subscribe(group=None)`` reads every partition without a group (tail, replies).

Capabilities are declared, not discovered by failing: each transport lists in
:attr:`Transport.capabilities` what it honours (:class:`Capability`), and an App refuses
at start, naming the backend and the capability, a subscriber option the transport
cannot honour (see ``docs/backends.md`` for the matrix), and a ``delay`` at the call. A
transport without :attr:`Capability.REPLAY` raises :class:`~tidings.ConfigurationError`
from ``set_offsets`` and ``offsets_for_time``.

Optional: a transport that can append records and commit offsets in one transaction
(Kafka) also implements :class:`SupportsTransactions`; exactly-once subscribers need it.
A transport that indexes its records by key, id and correlation id (SQLite) implements
:class:`SupportsLookup`, so the console finds a conversation without reading the log.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Awaitable, Collection, Mapping, Sequence
from typing import Protocol

from ._records import (
    GroupInfo,
    OutRecord,
    Position,
    Record,
    Start,
    TopicInfo,
    TopicPartition,
)

__all__ = [
    "BASE_CAPABILITIES",
    "Capability",
    "OutRecord",
    "RebalanceListener",
    "Subscription",
    "SupportsLookup",
    "SupportsTransactions",
    "TransactionalSubscription",
    "Transport",
]


class Capability(enum.StrEnum):
    """What a transport can honour (Watermill's ``Features``, NServiceBus's transport
    guarantees). The conformance suite asserts a refusal where one is missing."""

    #: Consumer groups: each group gets every message, its members share them.
    GROUPS = "groups"
    #: Records of one key stay in one partition, in order.
    ORDER_PER_KEY = "order_per_key"
    #: A log kept after reading: ``set_offsets``, ``offsets_for_time``, ``read``.
    REPLAY = "replay"
    #: ``OutRecord.deliver_at`` delays a record durably.
    DELAY = "delay"
    #: Work queues run higher priorities first.
    PRIORITY = "priority"
    #: Appends and offset commits in one transaction (:class:`SupportsTransactions`).
    EXACTLY_ONCE = "exactly_once"
    #: Records survive a restart of the broker (or of the process, for embedded ones).
    DURABILITY = "durability"
    #: Records are copied to several nodes (when the broker runs as a cluster).
    REPLICATION = "replication"
    #: ``append`` returns the offsets the records got (not only their partitions).
    APPEND_OFFSETS = "append_offsets"
    #: An index by key, id and correlation id (:class:`SupportsLookup`).
    LOOKUP = "lookup"
    #: What a member fetched and did not commit goes to the other members of its group
    #: when it leaves or dies (Kafka's uncommitted offsets, RabbitMQ's requeue). Without
    #: it, that work waits for the member to come back, or is lost with its session.
    HANDOVER = "handover"


#: What every transport honours unless it says otherwise.
BASE_CAPABILITIES: frozenset[Capability] = frozenset({
    Capability.GROUPS, Capability.ORDER_PER_KEY, Capability.REPLAY, Capability.DELAY,
    Capability.PRIORITY, Capability.DURABILITY, Capability.APPEND_OFFSETS, Capability.HANDOVER,
})


class RebalanceListener(Protocol):
    """Callbacks a subscription awaits when its assignment changes."""

    async def on_assigned(self, partitions: Collection[TopicPartition]) -> None:
        """Partitions were given to this member."""

    async def on_revoked(self, partitions: Collection[TopicPartition]) -> None:
        """Partitions are about to be given up: finish and commit their work now."""

    async def on_lost(self, partitions: Collection[TopicPartition]) -> None:
        """Partitions were lost without notice: drop their work, do not commit."""


class Subscription(abc.ABC):
    """A consumer's view of its assigned partitions."""

    @abc.abstractmethod
    async def fetch(self, max_records: int, timeout: float,
                    max_bytes: int | None = None) -> list[Record]:
        """Return up to ``max_records`` new records, waiting up to ``timeout`` seconds.

        Records of one partition come in offset order. Rebalance callbacks run inside
        this call. An empty list means nothing arrived in time. With ``max_bytes``, the
        records' values add up to at most that many bytes, except that a fetch that
        returns anything returns at least one record (however large), so a record
        larger than the budget is still delivered; records left out are not skipped.
        """

    @abc.abstractmethod
    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Durably record, per partition, the next offset this group should read."""

    @abc.abstractmethod
    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this member owns now."""

    def positions(self) -> Mapping[TopicPartition, int]:
        """Optional: per partition, the offset after everything read so far, past
        records that ``fetch`` never returns (Kafka's transaction markers), as of the
        last fetch that returned nothing. Once every record fetched from a partition is
        finished, the runtime commits up to it, so an idle group's lag reaches 0."""
        return {}

    @abc.abstractmethod
    async def close(self) -> None:
        """Leave the group (after revoking, so the runtime can commit)."""


class TransactionalSubscription(Subscription):
    """A group member whose commits can carry records: consume-transform-produce."""

    @abc.abstractmethod
    async def commit_appending(
        self, offsets: Mapping[TopicPartition, int], records: Sequence[OutRecord]
    ) -> None:
        """Append ``records`` and commit ``offsets`` atomically: readers of the records'
        topics see them if and only if the offsets are committed, whatever crashes.
        Raises :class:`~tidings.FencedError` like :meth:`commit`."""


class Transport(abc.ABC):
    """A backend: one connection to one broker or log."""

    #: Whether several OS processes can share this broker (the memory backend cannot).
    shared_between_processes: bool = True
    #: The messaging system's name, as OpenTelemetry's ``messaging.system`` gives it.
    system: str = "unknown"
    #: What this transport honours; an App refuses options that need anything else.
    capabilities: frozenset[Capability] = BASE_CAPABILITIES
    #: The largest record (value, key and headers, in bytes) ``append`` accepts, or None
    #: for no limit; a larger one raises :class:`~tidings.MessageTooLargeError`. The
    #: outbox checks it when an event is recorded, not when it is relayed.
    max_record_bytes: int | None = None

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect; raise :class:`~tidings.BrokerUnavailableError` if that fails."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release every resource. Idempotent."""

    @abc.abstractmethod
    async def ensure_topic(self, topic: str, partitions: int | None = None) -> int:
        """Create the topic if missing; return its partition count."""

    @abc.abstractmethod
    def append(self, records: Sequence[OutRecord]) -> Awaitable[Sequence[Position]]:
        """Append records durably; creates missing topics with the default partitions.
        (An ``async def`` does; a backend may also take the records before returning
        the awaitable, so that the caller need not keep them while it waits.)"""

    @abc.abstractmethod
    def subscribe(
        self,
        group: str | None,
        topics: Sequence[str],
        listener: RebalanceListener,
        *,
        start: Start = Start.EARLIEST,
        client: str = "",
    ) -> Subscription:
        """Join ``group`` on ``topics`` (or read them group-less when ``group`` is None)."""

    @abc.abstractmethod
    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        """Random access: records of one partition from ``offset`` on."""

    @abc.abstractmethod
    async def describe_topics(self) -> list[TopicInfo]:
        """Every topic with its partitions and offsets."""

    @abc.abstractmethod
    async def describe_groups(self) -> list[GroupInfo]:
        """Every group that has members or committed offsets."""

    @abc.abstractmethod
    async def set_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Overwrite a group's committed offsets (replay). Live members pick it up on
        their next assignment; reset a group while it has no members for exact results."""

    @abc.abstractmethod
    async def offsets_for_time(self, topic: str, timestamp: float) -> dict[int, int]:
        """Per partition, the first offset whose record is at or after ``timestamp``."""

    def dead_letters_trimmed(self) -> Mapping[str, int]:
        """Per dead-letter topic, how many *pending* dead letters this transport's own
        retention deleted since it started (a dead-letter topic keeps its entries until
        they are resolved unless given a retention of its own). Exported by the metrics
        as ``tidings_dead_letters_trimmed``. A transport whose broker trims by itself
        (Kafka) cannot know, and reports nothing."""
        return {}


class SupportsTransactions(abc.ABC):
    """Optional transport capability: exactly-once consume-transform-produce."""

    @abc.abstractmethod
    def subscribe_transactional(
        self,
        group: str,
        topics: Sequence[str],
        listener: RebalanceListener,
        *,
        start: Start = Start.EARLIEST,
        client: str = "",
    ) -> TransactionalSubscription:
        """Join ``group`` on ``topics`` like ``subscribe``, committing through
        :meth:`TransactionalSubscription.commit_appending`."""


class SupportsLookup(abc.ABC):
    """Optional transport capability: find a conversation's records through an index."""

    @abc.abstractmethod
    async def lookup(self, wanted: str) -> list[Record]:
        """Every record of the conversations that ``wanted`` names: those whose key,
        message id or correlation id is ``wanted`` lead to their correlation ids, and
        every record with one of those (as correlation id, or as its own id when it
        started the conversation) is returned, in no particular order."""

    async def prepare_lookups(self) -> None:  # noqa: B027 - optional: nothing to prepare
        """Bring the index up to date ahead of the next lookup (a console calls this at
        start and now and then, so lookups only index what is new)."""
