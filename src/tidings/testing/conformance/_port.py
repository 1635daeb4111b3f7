"""The port's own contract, on the transport itself (no App): a partition is revoked from
its old owner, whose ``on_revoked`` finishes and commits, before a new owner gets it; no two
members hold one partition at once; a member commits nothing for a partition it lost."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Collection

import pytest

from ..._backends import load_transport
from ..._errors import FencedError
from ..._records import OutRecord, TopicPartition
from ...ports import Capability, Subscription, Transport
from ._backend import Backend
from ._requires import requires
from ._util import eventually

PARTITIONS = 4
#: Rebalances take a few seconds on real brokers (Kafka's join and sync rounds).
SETTLE = 45.0


class Ledger:
    """Who holds which partition, as the members' listeners are told, and what was read."""

    def __init__(self) -> None:
        self.owners: dict[TopicPartition, str] = {}
        self.overlaps: list[str] = []
        self.lost: list[tuple[str, TopicPartition]] = []
        self.handled: list[tuple[TopicPartition, int, str]] = []


class PortMember:
    """A group member driven straight through the port: it fetches in a loop, marks every
    record handled, and commits what it handled when a partition is revoked."""

    def __init__(self, name: str, transport: Transport, ledger: Ledger) -> None:
        self.name, self.transport, self.ledger = name, transport, ledger
        self.positions: dict[TopicPartition, int] = {}
        self.subscription: Subscription | None = None
        self.loop: asyncio.Task[None] | None = None
        self.left = False
        self.stopping = False
        self.revoking = 0.2  # seconds on_revoked takes, as in-flight work finishing would

    def join(self, group: str, topic: str) -> None:
        """Subscribe and fetch in a loop until :meth:`pause` or :meth:`leave`."""
        self.subscription = self.transport.subscribe(group, [topic], self, client=self.name)
        self.loop = asyncio.create_task(self._fetch_forever())

    async def _fetch_forever(self) -> None:
        assert self.subscription is not None
        while not self.stopping:
            for record in await self.subscription.fetch(100, 0.1):
                tp = TopicPartition(record.topic, record.partition)
                if self.ledger.owners.get(tp) != self.name:
                    self.ledger.overlaps.append(f"{self.name} read {tp} held by "
                                                f"{self.ledger.owners.get(tp)}")
                self.ledger.handled.append((tp, record.offset, self.name))
                self.positions[tp] = record.offset + 1

    async def pause(self) -> None:
        """Stop fetching once the fetch under way returns (as the runtime does: a fetch
        is never cancelled in the middle of a rebalance), still a member."""
        if self.loop is not None:
            self.stopping = True
            await self.loop
            self.loop, self.stopping = None, False

    async def leave(self) -> None:
        """Leave the group in order (revoking first), and close the transport."""
        await self.pause()
        if self.subscription is not None and not self.left:
            self.left = True
            await self.subscription.close()
        await self.transport.close()

    def owned(self) -> frozenset[TopicPartition]:
        """What the subscription says this member owns."""
        return self.subscription.assignment() if self.subscription is not None else frozenset()

    async def on_assigned(self, partitions: Collection[TopicPartition]) -> None:
        """Take the partitions; none may still be held by another member."""
        for tp in partitions:
            holder = self.ledger.owners.get(tp)
            if holder not in (None, self.name):
                self.ledger.overlaps.append(f"{tp} given to {self.name} while {holder} holds it")
            self.ledger.owners[tp] = self.name

    async def on_revoked(self, partitions: Collection[TopicPartition]) -> None:
        """Finish (slowly), commit what was handled, then let the partitions go."""
        await asyncio.sleep(self.revoking)
        done = {tp: self.positions[tp] for tp in partitions if tp in self.positions}
        if done and self.subscription is not None:
            await self.subscription.commit(done)
        self._release(partitions)

    async def on_lost(self, partitions: Collection[TopicPartition]) -> None:
        """Drop the partitions without committing."""
        self.ledger.lost.extend((self.name, tp) for tp in partitions)
        self._release(partitions)

    def _release(self, partitions: Collection[TopicPartition]) -> None:
        for tp in partitions:
            self.positions.pop(tp, None)
            if self.ledger.owners.get(tp) == self.name:
                del self.ledger.owners[tp]


async def _members(backend: Backend, count: int, ledger: Ledger) -> list[PortMember]:
    members = []
    for n in range(count):
        transport = load_transport(backend.url)
        await transport.start()
        members.append(PortMember(f"m{n}", transport, ledger))
    return members


async def _fill(transport: Transport, topic: str, start: int, count: int) -> None:
    await transport.append([OutRecord(topic, str(n).encode(), key=f"k{n % 16}")
                            for n in range(start, start + count)])


def _split(members: list[PortMember], everything: set[TopicPartition]) -> Callable[[], bool]:
    def check() -> bool:
        held = [m.owned() for m in members]
        whole = set().union(*held) == everything
        return all(held) and sum(map(len, held)) == len(everything) and whole
    return check


@requires(Capability.GROUPS, Capability.ORDER_PER_KEY)  # partitions, each owned by one member
def test_a_partition_is_revoked_and_committed_before_its_next_owner_gets_it(
        backend: Backend, names: Callable[[str], str]) -> None:
    topic, group = names("handover"), names("port")

    async def main() -> None:
        ledger = Ledger()
        first, second, third = await _members(backend, 3, ledger)
        await first.transport.ensure_topic(topic, PARTITIONS)
        everything = {TopicPartition(topic, p) for p in range(PARTITIONS)}
        try:
            await _fill(first.transport, topic, 0, 200)
            first.join(group, topic)
            await eventually(lambda: first.owned() == everything, SETTLE, "one member owns all")
            second.join(group, topic)  # takes some over from the first
            await eventually(_split([first, second], everything), SETTLE, "two split them")
            await _fill(first.transport, topic, 200, 200)
            third.join(group, topic)
            await eventually(_split([first, second, third], everything), SETTLE, "three split")
            await _fill(second.transport, topic, 400, 200)
            await first.leave()  # its partitions move to the others, after it committed
            await eventually(_split([second, third], everything), SETTLE, "two left split them")
            await _fill(second.transport, topic, 600, 200)
            await eventually(lambda: len({(tp, o) for tp, o, _ in ledger.handled}) == 800,
                             SETTLE, "every record read")
            await asyncio.sleep(0.3)
        finally:
            for member in (first, second, third):
                await member.leave()
        assert ledger.overlaps == [], ledger.overlaps
        assert ledger.lost == [], "an orderly rebalance revokes; nothing is lost"
        repeated = [k for k, c in Counter((tp, o) for tp, o, _ in ledger.handled).items() if c > 1]
        assert repeated == [], f"read twice (committed on revoke, so never): {repeated[:5]}"

    asyncio.run(main())


@requires(Capability.GROUPS, Capability.ORDER_PER_KEY)  # partitions, each owned by one member
def test_a_member_cannot_commit_a_partition_it_no_longer_owns(
        backend: Backend, names: Callable[[str], str]) -> None:
    topic, group = names("fenced"), names("port")

    async def main() -> None:
        ledger = Ledger()
        old, new, reader = await _members(backend, 3, ledger)
        await old.transport.ensure_topic(topic, PARTITIONS)
        everything = {TopicPartition(topic, p) for p in range(PARTITIONS)}
        try:
            await _fill(old.transport, topic, 0, 100)
            old.join(group, topic)
            await eventually(lambda: old.owned() == everything, SETTLE, "one member owns all")
            assert old.subscription is not None
            await old.subscription.commit({tp: 1 for tp in everything})  # it owns them all
            new.join(group, topic)
            await eventually(_split([old, new], everything), SETTLE, "two split them")
            await old.pause()
            moved = sorted(new.owned())
            with pytest.raises(FencedError):
                await old.subscription.commit({tp: 99 for tp in moved})
            committed = await _committed(reader.transport, group, moved)
            assert committed and 99 not in committed.values(), committed
        finally:
            for member in (old, new, reader):
                await member.leave()

    asyncio.run(main())


async def _committed(transport: Transport, group: str,
                     partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    for info in await transport.describe_groups():
        if info.name == group:
            return {tp: o for tp, o in info.committed.items() if tp in partitions}
    return {}
