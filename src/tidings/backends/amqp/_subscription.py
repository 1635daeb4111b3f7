"""A group member (or a group-less reader) over RabbitMQ streams.

Ownership of a partition is an exclusive queue, ``tidings.owner.<group>.<topic>.<p>``,
held by the member's connection: only one connection can hold it, and RabbitMQ deletes
it the moment that connection dies (a SIGKILLed member frees its partitions at once; the
others take them once its heartbeats stop, after ``session_timeout``). The members agree
on who should own what with :func:`~tidings._assignment.desired_assignment` over the
members they hear (``_members``); a member gives up what it should not own (after
``on_revoked``, so the runtime commits first) and claims, lock by lock, what it should.
A claimed partition is read by a stream consumer from the group's committed offset.

The locks this member holds are tracked apart from the partitions it reads: a lock taken
and not yet read from (its consume failed, or the member reset meanwhile) is given back
as soon as the group wants it elsewhere, so a partition is never left locked by a member
that does not read it. Claims go through one channel of their own (a refused claim costs
that channel: the broker closes it), every call that can fail on the broker's side is
shielded from cancellation (``_channels``), and a member whose channels closed under it
(its connection lost, or an error of the broker) reports its partitions lost and joins
again on the next fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from aiormq import exceptions as amqp
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage

from ..._assignment import desired_assignment
from ..._errors import FencedError, TransportError
from ..._records import Record, Start, TopicPartition
from ..._waiting import wait_event
from ...ports import RebalanceListener, Subscription
from ._channels import open_channel, shielded
from ._log import JsonLog
from ._members import Membership
from ._streams import offset_of, partition_stream, to_record
from ._translate import driver_errors

if TYPE_CHECKING:
    from ._transport import AmqpTransport

__all__ = ["AmqpSubscription"]

T = TypeVar("T")

_CLAIM_RETRY = 0.2  # seconds between tries for a partition another member still holds


@dataclass(slots=True)
class _Owned:
    tag: str  # the consumer tag of the partition's stream consumer
    start: int  # offsets below this (an earlier chunk's) are skipped


class AmqpSubscription(Subscription):
    """Reads its partitions' streams through one channel."""

    _tags = itertools.count()

    def __init__(self, transport: AmqpTransport, group: str | None, topics: Sequence[str],
                 listener: RebalanceListener, start: Start, client: str) -> None:
        self._transport = transport
        self._group = group
        self._topics = tuple(dict.fromkeys(topics))
        self._listener = listener
        self._start = start
        self._member_id = f"{client or 'member'}-{uuid.uuid4().hex[:12]}"
        self._client = client
        self._owned: dict[TopicPartition, _Owned] = {}
        self._by_tag: dict[str, TopicPartition] = {}
        self._buffer: deque[tuple[str, DeliveredMessage]] = deque()
        self._wake = asyncio.Event()
        self._channel: AbstractChannel | None = None
        self._claims: AbstractChannel | None = None  # for lock declares and deletes
        self._locks: set[TopicPartition] = set()  # owner queues held by _locks_on
        self._locks_on: AbstractConnection | None = None
        self._membership: Membership | None = None
        self._offsets: JsonLog | None = None
        self._committed: dict[TopicPartition, int] = {}
        self._seeks: dict[TopicPartition, int] = {}
        self._acked = self._seen = 0
        self._next_claim = 0.0
        self._opened = self._closed = False
        self._broken = False  # the broker cancelled a consumer: reset (reconnect hook)

    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this member reads now."""
        return frozenset(self._owned)

    # -- opening -----------------------------------------------------------------------

    async def _open(self) -> None:
        try:
            await self._join()
        except BaseException:
            await self._discard()  # nothing half-open stays: the next fetch starts over
            raise
        self._opened = True

    async def _join(self) -> None:
        transport = self._transport
        sizes = {t: await transport.ensure_topic(t) for t in self._topics}
        with driver_errors("subscribing"):
            self._channel = await open_channel(await transport.ensure_connected())
            self._channel.on_consumer_cancel_callbacks.add(self._cancelled)
            await shielded(self._channel.basic_qos(prefetch_count=transport.settings.prefetch))
        if self._group is None:
            first = "first" if self._start is Start.EARLIEST else "next"
            for topic, count in sizes.items():
                for p in range(count):
                    await self._consume(TopicPartition(topic, p), first)
            return
        await transport.register_group(self._group)
        self._offsets = transport.open_offsets(self._group, self._on_offset)
        await self._offsets.open()
        self._membership = Membership(transport.connection, self._group, self._member_id,
                                      self._client, self._topics,
                                      transport.settings.session_timeout, self.assignment)
        self._membership.changed = self._wake
        await self._membership.open()

    def _on_offset(self, entry: dict[str, Any]) -> None:
        tp = TopicPartition(entry["t"], entry["p"])
        self._committed[tp] = entry["o"]
        if entry.get("seek") and tp in self._owned:
            self._seeks[tp] = entry["o"]
            self._wake.set()

    async def _consume(self, tp: TopicPartition, offset: int | str) -> None:
        assert self._channel is not None
        tag = f"{self._member_id}-{next(self._tags)}"
        self._by_tag[tag] = tp
        self._owned[tp] = _Owned(tag, offset if isinstance(offset, int) else -1)
        with driver_errors(f"reading {tp.topic!r}[{tp.partition}]"):
            await shielded(self._channel.basic_consume(
                partition_stream(*tp), self._deliver, no_ack=False, consumer_tag=tag,
                arguments={"x-stream-offset": offset}))

    def _cancelled(self, frame: object) -> None:
        """The broker cancelled a partition's consumer (its stream replica's node went
        down): like a lost connection, the member resets and claims again."""
        self._broken = True
        self._wake.set()

    async def _deliver(self, message: DeliveredMessage) -> None:
        self._buffer.append((message.consumer_tag or "", message))
        self._wake.set()

    # -- fetching ----------------------------------------------------------------------

    async def fetch(self, max_records: int, timeout: float,
                    max_bytes: int | None = None) -> list[Record]:
        """Records of the owned partitions (values of at most ``max_bytes`` in all, or
        one record; the rest stay buffered for the next fetch), waiting up to
        ``timeout`` for some. What the broker pushed ahead is bounded by the prefetch."""
        with driver_errors("fetching"):
            return await self._fetch(max_records, timeout, max_bytes)

    async def _fetch(self, max_records: int, timeout: float,
                     max_bytes: int | None = None) -> list[Record]:
        if not await self._transport.link.wait(timeout):
            return []  # the broker is unreachable; the link is connecting again
        if self._opened and (self._broken or not self._healthy()):
            await self._reset()
        if not self._opened:
            await self._open()
        deadline = time.monotonic() + timeout
        beat = self._transport.settings.session_timeout / 3
        while not self._closed:
            self._wake.clear()
            if self._group is not None:
                await self._rebalance()
                await self._apply_seeks()
            records = await self._drain(max_records, max_bytes)
            remaining = deadline - time.monotonic()
            if records or remaining <= 0:
                return records
            await wait_event(self._wake, min(remaining, beat, _CLAIM_RETRY))
        return []

    def _healthy(self) -> bool:
        """Whether every channel this member reads through is open."""
        if self._channel is None or self._channel.is_closed:
            return False
        if self._group is None:
            return True
        return (self._membership is not None and self._membership.alive
                and self._offsets is not None and self._offsets.alive)

    async def _drain(self, max_records: int, max_bytes: int | None = None) -> list[Record]:
        out: list[Record] = []
        room = max_bytes
        while self._buffer and len(out) < max_records:
            if room is not None and out and len(self._buffer[0][1].body) > room:
                break  # over the byte budget: it waits in the buffer
            tag, message = self._buffer.popleft()
            if room is not None:
                room -= len(message.body)
            self._seen = max(self._seen, message.delivery_tag or 0)
            tp = self._by_tag.get(tag)
            owned = self._owned.get(tp) if tp is not None else None
            if tp is None or owned is None or owned.tag != tag:
                continue  # from a consumer cancelled since (revoked or sought)
            if offset_of(message) >= owned.start:
                out.append(to_record(tp.topic, tp.partition, message))
        if self._seen > self._acked and self._channel is not None:
            # A stream ack only grants credit; one ack covers everything taken so far.
            try:
                with driver_errors("acknowledging"):
                    await self._channel.basic_ack(self._seen, multiple=True)
            except TransportError:
                if self._transport.link.up and not self._channel.is_closed:
                    raise
                # The connection went (a node restart) between the link check and the
                # ack: the records taken are valid, the credit goes with the channel,
                # and the next fetch waits for the link and opens a new one.
                self._broken = True
            else:
                self._acked = self._seen
        return out

    # -- the group ---------------------------------------------------------------------

    async def _rebalance(self) -> None:
        assert self._membership is not None
        sizes = {t: await self._transport.ensure_topic(t) for t in self._topics}
        desired = desired_assignment(self._membership.live(), sizes)[self._member_id]
        revoked = [tp for tp in self._owned if tp not in desired]
        if revoked:
            await self._listener.on_revoked(revoked)
            await self._release(revoked)
        if self._locks_on is not None and self._locks_on.is_closed:
            self._locks.clear()  # they went with their connection
        stray = [tp for tp in self._locks if tp not in desired and tp not in self._owned]
        if stray:  # held but not read (a claim whose reading failed): give them back
            await self._unlock(stray)
        wanted = sorted(tp for tp in desired if tp not in self._owned)
        if not wanted or time.monotonic() < self._next_claim:
            return
        claimed = [tp for tp in wanted if tp in self._locks or await self._lock(tp)]
        if len(claimed) < len(wanted):
            self._next_claim = time.monotonic() + _CLAIM_RETRY
        if claimed:
            assert self._offsets is not None
            await self._offsets.sync()  # every commit of the previous owners is known
            for tp in claimed:
                await self._consume(tp, await self._initial(tp))
            await self._listener.on_assigned(claimed)

    def _lock_name(self, tp: TopicPartition) -> str:
        return f"tidings.owner.{self._group}.{tp.topic}.{tp.partition}"

    async def _on_claims(self, call: Callable[[AbstractChannel], Awaitable[T]]) -> T:
        """``call(channel)`` on the claims channel; a new one if it closed (a refused
        claim closes it)."""
        for attempt in range(2):
            connection = self._transport.connection
            channel = self._claims
            if channel is None or channel.is_closed or channel.connection is not connection:
                channel = self._claims = await open_channel(connection)
            try:
                return await call(channel)
            except amqp.ChannelInvalidStateError:
                self._claims = None  # it was closing already
                if attempt:
                    raise
            except BaseException:
                self._claims = None
                raise
        raise AssertionError("unreachable")

    async def _lock(self, tp: TopicPartition) -> bool:
        """Take the partition's owner queue; False if another member holds it."""

        async def claim(channel: AbstractChannel) -> bool:
            await channel.queue_declare(self._lock_name(tp), exclusive=True)
            self._locks.add(tp)  # here, not in the caller: it may be cancelled by now
            self._locks_on = channel.connection
            return True

        with driver_errors("claiming a partition"):
            try:
                return await shielded(self._on_claims(claim))
            except amqp.ChannelLockedResource:
                return False  # another member holds it (it is leaving, or we are joining)

    async def _unlock(self, partitions: Sequence[TopicPartition]) -> None:
        """Give the owner queues back (those that cannot be now are retried later)."""

        async def delete(channel: AbstractChannel) -> None:
            for tp in partitions:
                if tp in self._locks:
                    await channel.queue_delete(self._lock_name(tp))
                    self._locks.discard(tp)

        with contextlib.suppress(Exception):
            await shielded(self._on_claims(delete))

    async def _initial(self, tp: TopicPartition) -> int:
        committed = self._committed.get(tp)
        if committed is not None:
            return committed
        if self._start is Start.EARLIEST:
            return 0
        # Pin "latest" at claim time, so a crash before the first commit skips nothing.
        end = await self._transport.end_offset(*tp)
        assert self._offsets is not None  # not commit(): the partition is not read yet
        with driver_errors(f"committing offsets of group {self._group!r}"):
            await self._offsets.append({"t": tp.topic, "p": tp.partition, "o": end})
        return end

    async def _apply_seeks(self) -> None:
        seeks, self._seeks = self._seeks, {}
        for tp, offset in seeks.items():
            owned = self._owned.get(tp)
            if owned is not None:
                await self._cancel(owned.tag)
                await self._consume(tp, offset)

    async def _cancel(self, tag: str) -> None:
        self._by_tag.pop(tag, None)
        if self._channel is not None and not self._channel.is_closed:
            with contextlib.suppress(Exception):
                await shielded(self._channel.basic_cancel(tag))

    async def _release(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            owned = self._owned.pop(tp, None)
            if owned is not None:
                await self._cancel(owned.tag)
        await self._unlock(partitions)

    async def _reset(self) -> None:
        """A channel (or the connection) closed under this member: its partitions are
        lost (the runtime drops their work uncommitted); it joins again on the next
        fetch. Locks its connection still holds are kept: taken back if the group still
        wants them here, given back otherwise."""
        lost = list(self._owned)
        self._broken = False
        self._owned.clear()
        self._by_tag.clear()
        self._buffer.clear()
        self._seeks.clear()
        self._committed.clear()
        self._acked = self._seen = 0
        self._opened = False
        await self._discard()
        if lost:
            await self._listener.on_lost(lost)

    async def _discard(self) -> None:
        """Close the membership, the offsets tail and the channels (not leaving)."""
        membership, self._membership = self._membership, None
        if membership is not None:
            await membership.close(leave=False)
        offsets, self._offsets = self._offsets, None
        if offsets is not None:
            await offsets.close()
        for channel in (self._channel, self._claims):
            if channel is not None and not channel.is_closed:
                with contextlib.suppress(Exception):
                    await shielded(channel.close())
        self._channel = self._claims = None
        if self._group is None:
            self._owned.clear()
            self._by_tag.clear()

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Append the offsets to the group's log; fenced for partitions not owned."""
        if self._group is None or not offsets:
            return
        foreign = [tp for tp in offsets if tp not in self._owned]
        if foreign:
            raise FencedError(f"member {self._member_id} does not own {sorted(foreign)}")
        assert self._offsets is not None
        with driver_errors(f"committing offsets of group {self._group!r}"):
            await self._offsets.append(*({"t": tp.topic, "p": tp.partition, "o": o}
                                         for tp, o in offsets.items()))

    async def close(self) -> None:
        """Revoke everything (so the runtime commits), release the locks, leave."""
        if self._closed:
            return
        if self._group is not None and self._owned:
            owned = list(self._owned)
            await self._listener.on_revoked(owned)
            await self._release(owned)
        if self._locks:
            await self._unlock(list(self._locks))
        self._closed = True
        self._wake.set()
        if self._membership is not None:
            await self._membership.close()
            self._membership = None
        await self._discard()

    def abandon(self) -> None:
        """Stop without revoking or leaving (the connection's end frees the locks)."""
        self._closed = True
        self._wake.set()
