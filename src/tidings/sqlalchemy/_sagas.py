"""Saga instances and their step history in the service's database.

Every write is a unit of work of the engine's :class:`GroupCommit`, so the steps of many
sagas running at once share transactions: one saga step costs one conditional UPDATE
and one INSERT of its history lines, and a COMMIT shared with the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from ..saga._errors import SagaConflictError, SagaNotFoundError
from ..saga._store import (
    ACTIVE,
    Direction,
    SagaRecord,
    SagaStatus,
    SagaStore,
    StepEvent,
    retried,
    saved,
)
from ._group import GroupCommit
from ._schema import saga_events_table, sagas_table
from ._sql import Executor, after_commit, in_transaction
from ._sqlite import execute_dml

__all__ = ["SqlSagaStore"]

_T = sagas_table
_E = saga_events_table
_COLUMNS = [c.name for c in _T.c]
_ACTIVE = sorted(str(s) for s in ACTIVE)


def _values(record: SagaRecord) -> dict[str, Any]:
    values = {name: getattr(record, name) for name in _COLUMNS}
    values["status"], values["direction"] = str(record.status), str(record.direction)
    return values


def _record(row: Any) -> SagaRecord:
    values = row._asdict()
    values["status"] = SagaStatus(values["status"])
    values["direction"] = Direction(values["direction"])
    return SagaRecord(**values)


def _event_values(events: Sequence[StepEvent]) -> list[dict[str, Any]]:
    return [{"saga_id": e.saga_id, "step": e.step, "phase": e.phase, "outcome": e.outcome,
             "attempt": e.attempt, "error": e.error, "at": e.at} for e in events]


def _free(now: Any) -> sa.ColumnElement[bool]:
    return sa.or_(_T.c.owner.is_(None), _T.c.lease_until < now)


# Built once and executed with new parameters: building a statement costs more than
# running it.
_INSERT = sa.insert(_T)
_INSERT_EVENTS = sa.insert(_E)
_SAVE = sa.update(_T).where(
    _T.c.id == sa.bindparam("w_id"), _T.c.version == sa.bindparam("w_version"),
    _T.c.owner == sa.bindparam("w_owner"),
).values({name: sa.bindparam(name) for name in _COLUMNS if name != "id"})
_NOW: sa.BindParameter[float] = sa.bindparam("now", type_=sa.Double())
_CLAIMABLE = sa.select(_T.c.id).where(
    _T.c.status.in_(_ACTIVE), _T.c.name.in_(sa.bindparam("names", expanding=True)),
    _free(_NOW), sa.or_(_T.c.wake_at.is_(None), _T.c.wake_at <= _NOW),
).order_by(_T.c.created_at).limit(sa.bindparam("limit"))


_SET = [name for name in _COLUMNS if name != "id"]
_PG = postgresql.dialect()  # type: ignore[no-untyped-call]
# PostgreSQL: every save of a group in one statement, its rows as arrays (one prepared
# statement whatever their number), RETURNING the sagas it matched.
_SAVE_MANY_PG = sa.text(
    f"UPDATE {_T.name} AS t SET "
    + ", ".join(f"{name} = u.{name}" for name in _SET)
    + " FROM unnest(" + ", ".join(
        f"CAST(:{name} AS {_T.c[name].type.compile(dialect=_PG)}[])"
        for name in _SET)
    + ", CAST(:w_id AS VARCHAR[]), CAST(:w_version AS INTEGER[]), CAST(:w_owner AS VARCHAR[]))"
    + f" AS u({', '.join(_SET)}, w_id, w_version, w_owner)"
    + " WHERE t.id = u.w_id AND t.version = u.w_version AND t.owner = u.w_owner"
    + " RETURNING t.id"
)

_EVENT_COLUMNS = [c.name for c in _E.c if c.name != "seq"]
# PostgreSQL: a new saga and its first history lines in one statement (one round trip).
_CREATE_PG = sa.text(
    f"WITH s AS (INSERT INTO {_T.name} ({', '.join(_COLUMNS)}) VALUES ("
    + ", ".join(f":{name}" for name in _COLUMNS) + ")) "
    + f"INSERT INTO {_E.name} ({', '.join(_EVENT_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"CAST(:e_{name} AS {_E.c[name].type.compile(dialect=_PG)}[])"
                for name in _EVENT_COLUMNS) + ")"
).bindparams(*(sa.bindparam(name, type_=_T.c[name].type) for name in _COLUMNS))


async def _save_many(conn: AsyncConnection,
                     items: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> list[Any]:
    """The saves of a group: each saga's row if version and owner still match, and the
    events of those that did. One UPDATE for them all on PostgreSQL (else one each:
    cheap on SQLite, where they run on the sqlite3 connection itself); one INSERT."""
    if conn.dialect.name == "postgresql":
        columns = {name: [values[name] for values, _ in items]
                   for name in (*_SET, "w_id", "w_version", "w_owner")}
        matched = {row[0] for row in await conn.execute(_SAVE_MANY_PG, columns)}
        ok = [values["w_id"] in matched for values, _ in items]
    else:
        ok = [await execute_dml(conn, _SAVE, values) == 1 for values, _ in items]
    rows = [row for (_, events), good in zip(items, ok, strict=True) if good for row in events]
    if rows:
        await execute_dml(conn, _INSERT_EVENTS, rows)
    return [None if good else SagaConflictError(
        f"saga {values['w_id']} changed hands or versions meanwhile")
        for (values, _), good in zip(items, ok, strict=True)]


class SqlSagaStore(SagaStore):
    """A :class:`~tidings.saga.SagaStore` on SQLAlchemy (``tidings_sagas`` and
    ``tidings_saga_events``); every write is conditional on the record's version and
    lease owner, and a unit of work of the engine's :class:`GroupCommit`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._commits = GroupCommit.of(engine)

    async def create(self, record: SagaRecord, events: Sequence[StepEvent], *,
                     within: Any = None, on_commit: Callable[[], None] | None = None) -> None:
        """Insert a saga, in ``within`` (an open transaction on this database) if given."""
        if within is None:
            await self._commits.run(lambda conn: self._insert(conn, record, events))
            if on_commit is not None:
                on_commit()
            return
        executor = in_transaction(within, self.engine, "SagaEngine.start(within=...)")
        await self._insert(executor, record, events)
        if on_commit is not None:
            await after_commit(executor, on_commit)

    async def _insert(self, executor: Executor, record: SagaRecord,
                      events: Sequence[StepEvent]) -> None:
        conn = await executor.connection() if isinstance(executor, AsyncSession) else executor
        if events and conn.dialect.name == "postgresql":
            rows = _event_values(events)
            values = _values(record)
            values.update({f"e_{name}": [row[name] for row in rows] for name in _EVENT_COLUMNS})
            await conn.execute(_CREATE_PG, values)
            return
        await execute_dml(conn, _INSERT, _values(record))
        if events:
            await execute_dml(conn, _INSERT_EVENTS, _event_values(events))

    async def get(self, saga_id: str) -> SagaRecord | None:
        """The saga with this id, or None."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(_T).where(_T.c.id == saga_id))).first()
        return None if row is None else _record(row)

    async def find(self, *, statuses: Collection[SagaStatus] = (), name: str | None = None,
                   limit: int = 100) -> list[SagaRecord]:
        """Sagas, newest first, filtered by status and name."""
        query = sa.select(_T).order_by(_T.c.created_at.desc()).limit(limit)
        if statuses:
            query = query.where(_T.c.status.in_([str(s) for s in statuses]))
        if name is not None:
            query = query.where(_T.c.name == name)
        async with self.engine.connect() as conn:
            return [_record(row) for row in (await conn.execute(query)).all()]

    async def count_by_status(self) -> dict[SagaStatus, int]:
        """How many sagas are in each status, in one query."""
        query = sa.select(_T.c.status, sa.func.count()).group_by(_T.c.status)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        counts = dict.fromkeys(SagaStatus, 0)
        counts.update({SagaStatus(status): int(count) for status, count in rows})
        return counts

    async def history(self, saga_id: str) -> list[StepEvent]:
        """The saga's step history, oldest first."""
        query = sa.select(_E).where(_E.c.saga_id == saga_id).order_by(_E.c.seq)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [StepEvent(r.saga_id, r.step, r.phase, r.outcome, r.attempt, r.error, r.at)
                for r in rows]

    async def claim(self, owner: str, names: Collection[str], lease: float, *,
                    saga_id: str | None = None, limit: int = 10) -> list[SagaRecord]:
        """Take free or expired leases of active, due sagas: one UPDATE for them all."""
        now = time.time()
        chosen = _CLAIMABLE if saga_id is None else _CLAIMABLE.where(_T.c.id == saga_id)
        claim = sa.update(_T).where(_T.c.id.in_(chosen), _free(_NOW)).values(
            owner=owner, lease_until=now + lease, version=_T.c.version + 1,
        ).returning(*_T.c)
        values = {"now": now, "names": list(names), "limit": limit}

        async def take(conn: AsyncConnection) -> list[SagaRecord]:
            return [_record(row) for row in (await conn.execute(claim, values)).all()]

        return sorted(await self._commits.run(take), key=lambda r: r.created_at)

    async def save(self, record: SagaRecord, events: Sequence[StepEvent], lease: float, *,
                   release: bool = False) -> SagaRecord:
        """Write the record and its events if version and owner still match."""
        written = saved(record, lease, release)
        values = _values(written)
        values.update(w_id=record.id, w_version=record.version, w_owner=record.owner)
        await self._commits.run_batched(_save_many, (values, _event_values(events)))
        return written

    async def renew(self, owner: str, saga_ids: Collection[str], lease: float) -> set[str]:
        """Extend ``owner``'s leases; return the ids it still holds."""
        statement = sa.update(_T).where(_T.c.owner == owner, _T.c.id.in_(list(saga_ids))) \
            .values(lease_until=time.time() + lease).returning(_T.c.id)

        async def extend(conn: AsyncConnection) -> set[str]:
            return {row.id for row in (await conn.execute(statement)).all()}

        return await self._commits.run(extend)

    async def release(self, owner: str, saga_ids: Collection[str]) -> None:
        """Drop ``owner``'s leases."""
        statement = sa.update(_T).where(_T.c.owner == owner, _T.c.id.in_(list(saga_ids))) \
            .values(owner=None, lease_until=None)
        await self._commits.run(lambda conn: conn.execute(statement))

    async def request_retry(self, saga_id: str, note: str = "retry requested") -> SagaRecord:
        """Put a parked saga back to work."""

        async def retry(conn: AsyncConnection) -> SagaRecord:
            row = (await conn.execute(sa.select(_T).where(_T.c.id == saga_id))).first()
            if row is None:
                raise SagaNotFoundError(f"no saga with id {saga_id!r}")
            current = _record(row)
            updated = retried(current)
            result = await conn.execute(
                sa.update(_T).where(_T.c.id == saga_id, _T.c.version == current.version)
                .values(**_values(updated))
            )
            if result.rowcount != 1:
                raise SagaConflictError(f"saga {saga_id} changed meanwhile; try again")
            event = StepEvent(saga_id, "", "saga", str(updated.status), error=note)
            await conn.execute(_INSERT_EVENTS, _event_values([event]))
            return updated

        return await self._commits.run(retry)
