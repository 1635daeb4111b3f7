"""Who is in a group: heartbeats on a fanout exchange per group.

Every member binds a private (exclusive, auto-delete) queue to ``tidings.members.<group>``
and announces itself there every ``session_timeout / 3``; a member not heard from for
``session_timeout`` is gone, and one that leaves says so. A member that hears a newcomer
answers at once, so a newcomer knows the group within a round trip; an *observer*
(``describe_groups``) is answered the same way without counting as a member, and the
answers carry each member's partitions. The view may differ
between members for a moment; partition locks (see ``_subscription``) keep two members
off one partition meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass

from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage

from ._channels import on_channel, open_channel, shielded
from ._translate import driver_errors

__all__ = ["Membership", "members_exchange", "observe"]


def members_exchange(group: str) -> str:
    """The fanout exchange on which ``group``'s members announce themselves."""
    return f"tidings.members.{group}"


@dataclass(slots=True)
class _Seen:
    client: str
    topics: frozenset[str]
    last_seen: float


class Membership:
    """This member's view of its group; ``changed`` is set when the view changes."""

    def __init__(self, connection: AbstractConnection, group: str, member_id: str,
                 client: str, topics: Collection[str], session_timeout: float,
                 assignment: Callable[[], Collection[tuple[str, int]]] = tuple) -> None:
        self.group, self.member_id, self.client = group, member_id, client
        self.topics = frozenset(topics)
        self.session_timeout = session_timeout
        self.changed = asyncio.Event()
        self._connection = connection
        self._channel: AbstractChannel | None = None
        self._members: dict[str, _Seen] = {}
        self._task: asyncio.Task[None] | None = None
        self._assignment = assignment

    async def open(self) -> None:
        """Bind a private queue, start announcing, and announce at once."""
        with driver_errors(f"joining group {self.group!r}"):
            self._channel = await shielded(self._listen())
        self._members[self.member_id] = _Seen(self.client, self.topics, time.monotonic())
        await self._announce()
        self._task = asyncio.create_task(self._beat())

    async def _listen(self) -> AbstractChannel:
        exchange = members_exchange(self.group)
        channel = await open_channel(self._connection)
        try:
            await channel.exchange_declare(exchange, exchange_type="fanout", durable=True)
            ok = await channel.queue_declare("", exclusive=True, auto_delete=True)
            await channel.queue_bind(ok.queue or "", exchange)
            await channel.basic_consume(ok.queue or "", self._heard, no_ack=True)
        except BaseException:
            with contextlib.suppress(Exception):
                await channel.close()
            raise
        return channel

    @property
    def alive(self) -> bool:
        """Whether this member still hears its group (its channel is open)."""
        return self._channel is not None and not self._channel.is_closed

    def live(self) -> dict[str, frozenset[str]]:
        """Member id -> subscribed topics, for every member heard from recently."""
        now = time.monotonic()
        self._members[self.member_id] = _Seen(self.client, self.topics, now)
        gone = [m for m, s in self._members.items() if now - s.last_seen > self.session_timeout]
        for member in gone:
            del self._members[member]
        return {m: s.topics for m, s in self._members.items()}

    def clients(self) -> dict[str, str]:
        """Member id -> client name, as last heard."""
        return {m: s.client for m, s in self._members.items()}

    async def _heard(self, message: DeliveredMessage) -> None:
        entry = json.loads(message.body)
        member = entry["id"]
        if member == self.member_id:
            return
        if entry.get("observe"):
            with contextlib.suppress(Exception):
                await self._announce()
            return
        if entry.get("leave"):
            if self._members.pop(member, None) is not None:
                self.changed.set()
            return
        known = member in self._members
        self._members[member] = _Seen(entry["client"], frozenset(entry["topics"]),
                                      time.monotonic())
        if not known:
            self.changed.set()
            with contextlib.suppress(Exception):
                await self._announce()

    async def _announce(self, leave: bool = False) -> None:
        if self._channel is None:
            return
        body = json.dumps({"id": self.member_id, "client": self.client,
                           "topics": sorted(self.topics), "leave": leave,
                           "assignment": sorted(self._assignment())}).encode()
        await self._channel.basic_publish(body, exchange=members_exchange(self.group))

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.session_timeout / 3)
            with contextlib.suppress(Exception):
                await self._announce()
            before = set(self._members)
            if set(self.live()) != before:
                self.changed.set()

    async def close(self, leave: bool = True) -> None:
        """Stop announcing; say goodbye unless ``leave`` is false (a crash)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if leave:
            with contextlib.suppress(Exception):
                await self._announce(leave=True)
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await shielded(channel.close())


async def observe(connection: AbstractConnection, group: str,
                  wait: float) -> dict[str, tuple[str, list[tuple[str, int]]]]:
    """Ask ``group``'s members to announce themselves; member id -> (client, partitions)
    of those that answer within ``wait`` seconds."""
    heard: dict[str, tuple[str, list[tuple[str, int]]]] = {}
    me = f"observer-{uuid.uuid4().hex[:12]}"

    async def note(message: DeliveredMessage) -> None:
        entry = json.loads(message.body)
        if entry["id"] == me or entry.get("observe"):
            return
        if entry.get("leave"):
            heard.pop(entry["id"], None)
        else:
            heard[entry["id"]] = (entry["client"],
                                  [(t, p) for t, p in entry.get("assignment", [])])

    async def roll_call(channel: AbstractChannel) -> None:
        exchange = members_exchange(group)
        await channel.exchange_declare(exchange, exchange_type="fanout", durable=True)
        ok = await channel.queue_declare("", exclusive=True, auto_delete=True)
        await channel.queue_bind(ok.queue or "", exchange)
        await channel.basic_consume(ok.queue or "", note, no_ack=True)
        await channel.basic_publish(json.dumps({"id": me, "observe": True}).encode(),
                                    exchange=exchange)
        await asyncio.sleep(wait)

    with driver_errors(f"describing group {group!r}"):
        await on_channel(connection, roll_call)
    return heard
