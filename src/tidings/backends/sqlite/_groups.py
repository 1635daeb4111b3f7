"""Consumer-group coordination in SQL: members, leased partition claims, offsets.

A member is live while ``members.expires_at`` is in the future; it owns a partition
while its row in ``claims`` is unexpired. Heartbeats push both expiries forward by the
member's session timeout. A claim is taken only when no live claim of another member
exists, and released (deleted) only after the member revoked the partition, so an
orderly hand-over never has two owners; a SIGKILLed member's claims expire and are
taken over. Every function runs inside the writer's (or reader's) transaction.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..._errors import ConfigurationError, UnknownTopicError
from ..._records import GroupInfo, MemberInfo, Start, TopicPartition

__all__ = [
    "GroupView",
    "Membership",
    "claim",
    "commit",
    "committed",
    "describe_groups",
    "generation",
    "heartbeat",
    "leave",
    "release",
    "set_offsets",
    "view",
]

_PRUNE_AFTER = 60.0  # seconds a dead member's row is kept (for nobody in particular)

_CLAIM = (
    "INSERT INTO claims (group_name, topic, partition, owner, lease_until) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (group_name, topic, partition) DO UPDATE "
    "SET owner = excluded.owner, lease_until = excluded.lease_until "
    "WHERE claims.lease_until <= ? OR claims.owner = excluded.owner"
)
_UPSERT_OFFSET = (
    "INSERT INTO offsets (group_name, topic, partition, next_offset) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (group_name, topic, partition) DO UPDATE SET next_offset = excluded.next_offset"
)


@dataclass(frozen=True, slots=True)
class Membership:
    """Who a member is: its group, id, client name, topics and session timeout."""

    group: str
    member_id: str
    client: str
    topics: tuple[str, ...]
    session_timeout: float


@dataclass(frozen=True, slots=True)
class GroupView:
    """A group as one member sees it: live members' topics, its claims, the counters."""

    members: Mapping[str, frozenset[str]]
    owned: frozenset[TopicPartition]
    generation: int
    resets: int


def heartbeat(conn: sqlite3.Connection, member: Membership) -> GroupView:
    """Join or renew: push the member's and its claims' expiry forward."""
    now = time.time()
    until = now + member.session_timeout
    group, member_id = member.group, member.member_id
    conn.execute("INSERT INTO groups (name) VALUES (?) ON CONFLICT DO NOTHING", (group,))
    row = conn.execute(
        "SELECT expires_at FROM members WHERE group_name = ? AND member_id = ?", (group, member_id)
    ).fetchone()
    conn.execute(
        "INSERT INTO members (group_name, member_id, client, topics, expires_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (group_name, member_id) "
        "DO UPDATE SET expires_at = excluded.expires_at",
        (group, member_id, member.client, json.dumps(member.topics), until),
    )
    if row is None or row[0] <= now:  # a (re)join changes the group
        _bump(conn, group)
    conn.execute(
        "UPDATE claims SET lease_until = ? WHERE group_name = ? AND owner = ?",
        (until, group, member_id),
    )
    conn.execute(
        "DELETE FROM members WHERE group_name = ? AND expires_at < ?", (group, now - _PRUNE_AFTER)
    )
    return view(conn, group, member_id)


def view(conn: sqlite3.Connection, group: str, member_id: str) -> GroupView:
    """Live members, this member's claims and the group's counters (read only)."""
    now = time.time()
    members = {
        mid: frozenset(json.loads(topics))
        for mid, topics in conn.execute(
            "SELECT member_id, topics FROM members WHERE group_name = ? AND expires_at > ?",
            (group, now),
        )
    }
    owned = frozenset(
        TopicPartition(topic, partition)
        for topic, partition in conn.execute(
            "SELECT topic, partition FROM claims WHERE group_name = ? AND owner = ?",
            (group, member_id),
        )
    )
    row = conn.execute("SELECT generation, resets FROM groups WHERE name = ?", (group,)).fetchone()
    generation, resets = row if row is not None else (0, 0)
    return GroupView(members, owned, int(generation), int(resets))


def generation(conn: sqlite3.Connection, group: str) -> int:
    """The group's generation, cheap enough to read on every fetch."""
    row = conn.execute("SELECT generation FROM groups WHERE name = ?", (group,)).fetchone()
    return int(row[0]) if row is not None else 0


def claim(
    conn: sqlite3.Connection, member: Membership, wanted: Sequence[TopicPartition], start: Start
) -> dict[TopicPartition, int]:
    """Take the wanted partitions that have no live claim; return their committed offsets
    (pinning the start offset as committed when the group has none yet)."""
    now = time.time()
    got: dict[TopicPartition, int] = {}
    for tp in wanted:
        cursor = conn.execute(
            _CLAIM,
            (member.group, tp.topic, tp.partition, member.member_id,
             now + member.session_timeout, now),
        )
        if cursor.rowcount > 0:
            got[tp] = _committed_or_pin(conn, member.group, tp, start)
    return got


def _committed_or_pin(
    conn: sqlite3.Connection, group: str, tp: TopicPartition, start: Start
) -> int:
    row = conn.execute(
        "SELECT next_offset FROM offsets WHERE group_name = ? AND topic = ? AND partition = ?",
        (group, tp.topic, tp.partition),
    ).fetchone()
    if row is not None:
        return int(row[0])
    first, end = conn.execute(
        "SELECT start_offset, next_offset FROM partitions WHERE topic = ? AND partition = ?",
        (tp.topic, tp.partition),
    ).fetchone()
    # Pinning "latest" now means a crash before the first commit skips nothing.
    offset = int(end if start is Start.LATEST else first)
    conn.execute(_UPSERT_OFFSET, (group, tp.topic, tp.partition, offset))
    return offset


def release(conn: sqlite3.Connection, member: Membership, tps: Sequence[TopicPartition]) -> None:
    """Give partitions up (after revoking them), so another member can claim them."""
    conn.executemany(
        "DELETE FROM claims WHERE group_name = ? AND topic = ? AND partition = ? AND owner = ?",
        [(member.group, tp.topic, tp.partition, member.member_id) for tp in tps],
    )
    _bump(conn, member.group)


def leave(conn: sqlite3.Connection, member: Membership) -> None:
    """Release every claim and delete the member, so others take over at once."""
    args = (member.group, member.member_id)
    conn.execute("DELETE FROM claims WHERE group_name = ? AND owner = ?", args)
    conn.execute("DELETE FROM members WHERE group_name = ? AND member_id = ?", args)
    _bump(conn, member.group)


def commit(
    conn: sqlite3.Connection, group: str, member_id: str, offsets: Mapping[TopicPartition, int]
) -> list[TopicPartition]:
    """Store offsets of the partitions this member owns; return the others (fenced)."""
    owned = {
        (topic, partition)
        for topic, partition in conn.execute(
            "SELECT topic, partition FROM claims WHERE group_name = ? AND owner = ?",
            (group, member_id),
        )
    }
    conn.executemany(
        _UPSERT_OFFSET,
        [(group, tp[0], tp[1], offset) for tp, offset in offsets.items() if tuple(tp) in owned],
    )
    return sorted(TopicPartition(*tp) for tp in offsets if tuple(tp) not in owned)


def committed(
    conn: sqlite3.Connection, group: str, tps: Sequence[TopicPartition]
) -> dict[TopicPartition, int]:
    """The committed offsets of some partitions (missing ones are left out)."""
    result: dict[TopicPartition, int] = {}
    for tp in tps:
        row = conn.execute(
            "SELECT next_offset FROM offsets WHERE group_name = ? AND topic = ? AND partition = ?",
            (group, tp.topic, tp.partition),
        ).fetchone()
        if row is not None:
            result[tp] = int(row[0])
    return result


def set_offsets(
    conn: sqlite3.Connection, group: str, offsets: Mapping[TopicPartition, int]
) -> None:
    """Overwrite committed offsets and bump ``resets`` so live owners seek to them."""
    for tp, offset in offsets.items():
        row = conn.execute(
            "SELECT 1 FROM partitions WHERE topic = ? AND partition = ?", (tp.topic, tp.partition)
        ).fetchone()
        if row is None:
            raise UnknownTopicError(f"unknown topic partition {tp.topic!r}[{tp.partition}]")
        if offset < 0:
            raise ConfigurationError(f"offset for {tp.topic!r}[{tp.partition}] must be >= 0")
    conn.executemany(
        _UPSERT_OFFSET, [(group, tp.topic, tp.partition, offset) for tp, offset in offsets.items()]
    )
    conn.execute("INSERT INTO groups (name) VALUES (?) ON CONFLICT DO NOTHING", (group,))
    conn.execute(
        "UPDATE groups SET resets = resets + 1, generation = generation + 1 WHERE name = ?",
        (group,),
    )


def _bump(conn: sqlite3.Connection, group: str) -> None:
    conn.execute("UPDATE groups SET generation = generation + 1 WHERE name = ?", (group,))


def describe_groups(conn: sqlite3.Connection) -> list[GroupInfo]:
    """Every group with live members (and the partitions they hold) or committed offsets."""
    now = time.time()
    members: dict[str, list[tuple[str, str]]] = {}
    for group, member_id, client in conn.execute(
        "SELECT group_name, member_id, client FROM members WHERE expires_at > ? "
        "ORDER BY group_name, member_id",
        (now,),
    ):
        members.setdefault(group, []).append((member_id, client))
    owners: dict[tuple[str, str], list[TopicPartition]] = {}
    for group, owner, topic, partition in conn.execute(
        "SELECT group_name, owner, topic, partition FROM claims WHERE lease_until > ? "
        "ORDER BY topic, partition",
        (now,),
    ):
        owners.setdefault((group, owner), []).append(TopicPartition(topic, partition))
    offsets: dict[str, dict[TopicPartition, int]] = {}
    for group, topic, partition, offset in conn.execute(
        "SELECT group_name, topic, partition, next_offset FROM offsets"
    ):
        offsets.setdefault(group, {})[TopicPartition(topic, partition)] = offset
    return [
        GroupInfo(
            name,
            tuple(MemberInfo(mid, client, tuple(owners.get((name, mid), ())))
                  for mid, client in members.get(name, ())),
            offsets.get(name, {}),
        )
        for name in sorted(set(members) | set(offsets))
    ]
