"""Outbox rows the relay can never send, moved aside so that the others flow on.

A row the bus refuses for good (a record over its size limit: ``MessageTooLargeError``;
or a ``ConfigurationError`` / ``SerializationError``) would otherwise be retried
forever, and every row recorded after it would wait behind it. The relay moves it, in
one transaction, from ``tidings_outbox`` to ``tidings_outbox_dead`` with the error.

Order per key: the later rows of the same topic and key are moved with it
(``blocked_by`` names the row they wait behind), in this pass and in later ones while a
dead row of that topic and key remains, so that no consumer sees a key's events with
one missing in the middle. Rows of other keys (and rows without a key) are not held
back. :class:`OutboxDeadLetters` (and ``tidings outbox dead``) lists them; ``requeue``
puts them back in the outbox (once the cause is fixed: a larger limit), in their
original order; ``discard`` deletes them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .._errors import ConfigurationError, MessageTooLargeError, SerializationError
from ._schema import outbox_dead_table, outbox_table

__all__ = ["PERMANENT", "DeadRow", "OutboxDeadLetters", "Triage", "dead_keys",
           "ensure_dead_table", "move_dead"]

log = logging.getLogger("tidings.outbox")

#: Errors that sending the same row again would meet again.
PERMANENT = (MessageTooLargeError, ConfigurationError, SerializationError)

_dead = outbox_dead_table.c
_COLUMNS = ("seq", "message_id", "topic", "key", "value", "headers", "deliver_at",
            "created_at")


@dataclass(frozen=True, slots=True)
class DeadRow:
    """A dead-lettered outbox row (its value left out: see ``size``)."""

    seq: int
    message_id: str
    topic: str
    key: str | None
    size: int
    created_at: float
    failed_at: float
    error: str
    blocked_by: int | None


class Triage:
    """One relay pass's verdicts: which rows are dead (with their error) and which wait
    behind a dead row of their topic and key."""

    def __init__(self, dead_keys: set[tuple[str, str]]) -> None:
        self._blocked_keys: dict[tuple[str, str], int | None] = dict.fromkeys(dead_keys)
        self.errors: dict[int, str] = {}
        self.blocked_by: dict[int, int | None] = {}

    def blocked(self, row: Any) -> bool:
        """Whether ``row`` waits behind a dead row of its topic and key (and is marked so)."""
        if row.key is None or (row.topic, row.key) not in self._blocked_keys:
            return False
        self.errors[row.seq] = "waits behind a dead row of the same topic and key"
        self.blocked_by[row.seq] = self._blocked_keys[(row.topic, row.key)]
        return True

    def dead(self, row: Any, exc: BaseException) -> None:
        """``row`` can never be sent: it is dead, and its key's later rows wait behind it."""
        self.errors[row.seq] = f"{type(exc).__name__}: {exc}"[:4000]
        self.blocked_by[row.seq] = None
        if row.key is not None:
            self._blocked_keys.setdefault((row.topic, row.key), row.seq)

    def __bool__(self) -> bool:
        return bool(self.errors)


async def ensure_dead_table(engine: AsyncEngine) -> None:
    """Create ``tidings_outbox_dead`` if missing: a database made by an older version
    (or by migrations that do not have it yet) would otherwise stop the relay at its
    first query. Without the right to create it, the relay still runs, and logs why."""
    try:
        async with engine.begin() as conn:
            await conn.run_sync(outbox_dead_table.create, checkfirst=True)
    except sa.exc.SQLAlchemyError as exc:
        log.warning("outbox relay: cannot create tidings_outbox_dead (add it to your "
                    "migrations: tidings.sqlalchemy.metadata has it): %s", exc)


async def dead_keys(conn: AsyncConnection) -> set[tuple[str, str]]:
    """The (topic, key) pairs with a dead row: their later rows must wait too."""
    query = sa.select(_dead.topic, _dead.key).where(_dead.key.is_not(None)).distinct()
    return {(topic, key) for topic, key in (await conn.execute(query)).all()}


async def move_dead(conn: AsyncConnection, rows: Sequence[Any], triage: Triage) -> None:
    """Move the rows ``triage`` judged from the outbox to the dead table (one transaction:
    the caller's)."""
    now = time.time()
    moved = [row for row in rows if row.seq in triage.errors]
    if not moved:
        return
    await conn.execute(sa.insert(outbox_dead_table), [
        {**{name: getattr(row, name) for name in _COLUMNS}, "failed_at": now,
         "error": triage.errors[row.seq], "blocked_by": triage.blocked_by[row.seq]}
        for row in moved
    ])
    seqs = [row.seq for row in moved]
    await conn.execute(sa.delete(outbox_table).where(outbox_table.c.seq.in_(seqs)))


class OutboxDeadLetters:
    """The dead-lettered rows of an outbox: list them, put them back, or delete them."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def list(self, limit: int = 100) -> list[DeadRow]:
        """The oldest ``limit`` dead rows, in recorded order."""
        query = sa.select(
            _dead.seq, _dead.message_id, _dead.topic, _dead.key,
            sa.func.length(_dead.value).label("size"), _dead.created_at, _dead.failed_at,
            _dead.error, _dead.blocked_by,
        ).order_by(_dead.seq).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [DeadRow(int(r.seq), r.message_id, r.topic, r.key, int(r.size or 0),
                        float(r.created_at), float(r.failed_at), r.error,
                        None if r.blocked_by is None else int(r.blocked_by)) for r in rows]

    async def requeue(self, seqs: Iterable[int] | None = None) -> int:
        """Put dead rows (all, or those of ``seqs``) back in the outbox under their seq,
        so the relay sends them in their original order; return how many."""
        where = _selection(seqs)
        async with self.engine.begin() as conn:
            rows = (await conn.execute(
                sa.select(*(getattr(_dead, name) for name in _COLUMNS)).where(where))).all()
            if rows:
                await conn.execute(sa.insert(outbox_table),
                                   [{name: getattr(r, name) for name in _COLUMNS} for r in rows])
                await conn.execute(sa.delete(outbox_dead_table).where(where))
        return len(rows)

    async def discard(self, seqs: Iterable[int] | None = None) -> int:
        """Delete dead rows (all, or those of ``seqs``); return how many."""
        async with self.engine.begin() as conn:
            result = await conn.execute(sa.delete(outbox_dead_table).where(_selection(seqs)))
        return int(result.rowcount or 0)


def _selection(seqs: Iterable[int] | None) -> sa.ColumnElement[bool]:
    return sa.true() if seqs is None else _dead.seq.in_(list(seqs))
