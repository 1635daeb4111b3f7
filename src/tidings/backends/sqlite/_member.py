"""A member of a consumer group over SQLite, with leased partition claims.

Protocol (see ``_groups.py`` for the SQL):

* Joining writes a member row; a heartbeat task renews it and the member's claims
  every ``heartbeat`` seconds, independently of ``fetch`` (slow handlers keep leases).
* Each fetch checks the group's ``generation`` in the same query as the records; when
  it moved (a member joined or left, a partition was released) the member re-reads
  the live members. Heartbeats notice members whose lease expired.
* Rebalancing (inside ``fetch``): the desired assignment is computed from the live
  members, sorted by id. Partitions no longer desired are revoked (awaiting
  ``on_revoked`` so the runtime commits) and only then released; desired partitions
  are claimed only when no live claim exists, and start at the committed offset.
* A claim found missing by a heartbeat was lost (expired and taken): its records stop
  at once and ``on_lost`` runs in the next fetch. Commits are fenced in SQL.
* ``set_offsets`` bumps the group's ``resets``; owners notice on their next heartbeat
  or fetch and restart the partitions whose committed offset changed from there
  (``on_lost`` then ``on_assigned``, since in-flight work of the old position is moot).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..._assignment import desired_assignment
from ..._errors import FencedError, TransportError
from ..._records import Record, Start, TopicPartition
from ..._waiting import cancel_and_wait
from ...ports import RebalanceListener
from . import _groups
from ._groups import GroupView, Membership
from ._subscription import FetchingSubscription, read_chunks

if TYPE_CHECKING:
    from ._transport import SqliteTransport

__all__ = ["GroupMember"]

log = logging.getLogger("tidings.sqlite")
_ids = itertools.count()


class GroupMember(FetchingSubscription):
    """One member of a consumer group (see the module docstring for the protocol)."""

    def __init__(
        self,
        transport: SqliteTransport,
        group: str,
        topics: Sequence[str],
        listener: RebalanceListener,
        start: Start,
        client: str,
    ) -> None:
        super().__init__(transport, topics, listener, start)
        member_id = f"{client or 'member'}-{os.getpid()}-{next(_ids)}-{uuid.uuid4().hex[:6]}"
        self.member = Membership(
            group, member_id, client, self._topics, transport.options.session_timeout
        )
        self._members: Mapping[str, frozenset[str]] = {}
        self._sizes: dict[str, int] = {}
        self._generation = -1
        self._resets = -1
        self._joined = False
        self._dirty = self._refresh = self._reseek = False
        self._lost: set[TopicPartition] = set()
        self._strays: set[TopicPartition] = set()
        self._claiming: frozenset[TopicPartition] = frozenset()
        self._pending: set[TopicPartition] = set()
        self._marks: dict[TopicPartition, int] = {}  # offsets we started from or committed
        self._heartbeat_task: asyncio.Task[None] | None = None

    # -- fetch-time work -------------------------------------------------------------

    async def _prepare(self) -> None:
        if not self._joined:
            await self._join()
        if self._refresh:
            self._refresh = False
            snapshot = frozenset(self._positions)
            group, me = self.member.group, self.member.member_id
            self._absorb(await self._transport.reader.call(lambda c: _groups.view(c, group, me)),
                         snapshot)
        if self._lost:
            lost, self._lost = sorted(self._lost), set()
            await self._listener.on_lost(lost)
        if self._reseek:
            self._reseek = False
            await self._follow_resets()
        if self._dirty:
            self._dirty = False
            try:
                await self._rebalance()
            except BaseException:
                self._dirty = True  # try again on the next fetch
                raise

    async def _join(self) -> None:
        metas = await self._transport.ensure_topics(self._topics)
        self._sizes = {name: len(meta.pids) for name, meta in metas.items()}
        self._pids = {
            TopicPartition(name, p): pid for name, meta in metas.items()
            for p, pid in enumerate(meta.pids)
        }
        member = self.member
        view = await self._transport.writer.call(lambda c: _groups.heartbeat(c, member))
        self._joined = True
        self._resets = view.resets
        self._absorb(view, frozenset())
        self._dirty = True
        self._heartbeat_task = asyncio.create_task(self._heartbeats(), name="tidings-heartbeat")

    async def _read(self, max_records: int, max_bytes: int | None = None) -> list[Record]:
        wants = self._wants()
        group = self.member.group

        def job(conn: sqlite3.Connection) -> tuple[int, list[list[Record]]]:
            return (_groups.generation(conn, group),
                    read_chunks(conn, wants, max_records, max_bytes))

        generation, chunks = await self._transport.reader.call(job)
        if generation != self._generation:
            self._refresh = True
            self._wake.set()  # come back at once instead of waiting for records
        return self._accept(wants, chunks)

    async def _rebalance(self) -> None:
        me = self.member.member_id
        members = {**self._members, me: frozenset(self._topics)}
        desired = desired_assignment(members, self._sizes).get(me, set())
        revoked = sorted(set(self._positions) - desired)
        if revoked:
            await self._listener.on_revoked(revoked)
            for tp in revoked:
                self._positions.pop(tp, None)
                self._marks.pop(tp, None)
            await self._release(revoked)
        strays = sorted(self._strays - desired - set(self._positions))
        self._strays.clear()
        if strays:
            await self._release(strays)
        wanted = sorted(desired - set(self._positions))
        claimed = await self._claim(wanted) if wanted else {}
        self._pending = set(wanted) - set(claimed)
        if claimed:
            await self._listener.on_assigned(sorted(claimed))

    async def _claim(self, wanted: list[TopicPartition]) -> dict[TopicPartition, int]:
        member, start = self.member, self._start
        self._claiming = frozenset(wanted)
        try:
            claimed: dict[TopicPartition, int] = await self._transport.writer.call(
                lambda c: _groups.claim(c, member, wanted, start)
            )
        finally:
            self._claiming = frozenset()
        self._positions.update(claimed)
        self._marks.update(claimed)
        return claimed

    async def _release(self, tps: list[TopicPartition]) -> None:
        member = self.member
        await self._transport.writer.call(lambda c: _groups.release(c, member, tps))

    async def _follow_resets(self) -> None:
        owned = sorted(self._positions)
        if not owned:
            return
        group = self.member.group
        current = await self._transport.reader.call(lambda c: _groups.committed(c, group, owned))
        moved = sorted(
            tp for tp, offset in current.items()
            if tp in self._positions and offset != self._marks.get(tp)
        )
        if not moved:
            return
        await self._listener.on_lost(moved)
        for tp in moved:
            self._positions[tp] = self._marks[tp] = current[tp]
        await self._listener.on_assigned(moved)

    # -- heartbeats ------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        member, interval = self.member, self._transport.options.heartbeat
        while not self._closed:
            await asyncio.sleep(interval)
            snapshot = frozenset(self._positions)
            try:
                view = await self._transport.writer.call(lambda c: _groups.heartbeat(c, member))
            except TransportError as exc:
                log.warning("heartbeat of %s failed: %s; retrying", member.member_id, exc)
                continue
            except Exception:  # never let a bug end the heartbeats silently
                log.exception("heartbeat of %s failed; retrying", member.member_id)
                continue
            self._absorb(view, snapshot)
            if self._pending:
                self._dirty = True
                self._wake.set()

    def _absorb(self, view: GroupView, snapshot: frozenset[TopicPartition]) -> None:
        """Take in what the group looks like now. ``snapshot``: partitions owned when
        the view was requested (a partition claimed since then is not lost)."""
        self._generation = view.generation
        lost = {tp for tp in snapshot if tp in self._positions and tp not in view.owned}
        if lost:
            for tp in lost:
                self._positions.pop(tp, None)
                self._marks.pop(tp, None)
            self._lost |= lost
            self._dirty = True
        strays = view.owned - set(self._positions) - self._claiming
        if strays:
            self._strays |= strays
            self._dirty = True
        if view.members != self._members:
            self._members = view.members
            self._dirty = True
        if self._pending:  # a release or an expiry may have freed them: try again
            self._dirty = True
        if view.resets != self._resets:
            self._resets = view.resets
            self._reseek = True
        if self._dirty or self._reseek or lost:
            self._wake.set()

    # -- commits and leaving ---------------------------------------------------------

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Store offsets durably; raises :class:`FencedError` for partitions this member
        does not own (the owned ones are still stored)."""
        if not offsets:
            return
        group, me, wanted = self.member.group, self.member.member_id, dict(offsets)
        fenced = await self._transport.writer.call(lambda c: _groups.commit(c, group, me, wanted))
        for tp, offset in wanted.items():
            if tp not in fenced:
                self._marks[tp] = offset
        if fenced:
            raise FencedError(f"member {me} of group {group!r} does not own {fenced}")

    async def close(self) -> None:
        """Revoke every partition (awaiting ``on_revoked``), release them and leave the
        group, so other members take over at once. Idempotent."""
        if self._closed:
            return
        self._forget_wake()
        await self._stop_heartbeats()
        if not self._joined:
            return
        owned = sorted(self._positions)
        if owned:
            await self._listener.on_revoked(owned)
        self._positions.clear()
        member = self.member
        try:
            await self._transport.writer.call(lambda c: _groups.leave(c, member))
        except TransportError as exc:
            log.warning("%s could not leave group %r cleanly (%s); its leases will expire",
                        member.member_id, member.group, exc)

    def abandon(self) -> None:
        """Stop at once without revoking or leaving: what a crashed process looks like."""
        self._forget_wake()
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()

    async def _stop_heartbeats(self) -> None:
        task, self._heartbeat_task = self._heartbeat_task, None
        await cancel_and_wait(task)
