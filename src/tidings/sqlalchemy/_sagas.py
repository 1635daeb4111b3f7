"""Saga instances and their step history in the service's database."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from ..saga._errors import SagaConflictError, SagaNotFoundError
from ..saga._store import (
    ACTIVE,
    Direction,
    SagaRecord,
    SagaStatus,
    SagaStore,
    StepEvent,
    retried,
)
from ._schema import saga_events_table, sagas_table
from ._sql import Executor, in_transaction

__all__ = ["SqlSagaStore"]

_T = sagas_table
_E = saga_events_table


def _values(record: SagaRecord) -> dict[str, Any]:
    return {"id": record.id, "name": record.name, "status": str(record.status),
            "direction": str(record.direction), "state": record.state, "step": record.step,
            "attempts": record.attempts, "error": record.error, "version": record.version,
            "owner": record.owner, "lease_until": record.lease_until,
            "created_at": record.created_at, "updated_at": record.updated_at}


def _record(row: Any) -> SagaRecord:
    return SagaRecord(
        id=row.id, name=row.name, status=SagaStatus(row.status),
        direction=Direction(row.direction), state=row.state, step=row.step,
        attempts=row.attempts, error=row.error, version=row.version, owner=row.owner,
        lease_until=row.lease_until, created_at=row.created_at, updated_at=row.updated_at,
    )


def _event_values(events: Sequence[StepEvent]) -> list[dict[str, Any]]:
    return [{"saga_id": e.saga_id, "step": e.step, "phase": e.phase, "outcome": e.outcome,
             "attempt": e.attempt, "error": e.error, "at": e.at} for e in events]


def _free(now: float) -> sa.ColumnElement[bool]:
    return sa.or_(_T.c.owner.is_(None), _T.c.lease_until < now)


class SqlSagaStore(SagaStore):
    """A :class:`~tidings.saga.SagaStore` on SQLAlchemy (``tidings_sagas`` and
    ``tidings_saga_events``); every write is one transaction, conditional on the
    record's version and lease owner."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, record: SagaRecord, event: StepEvent, *, within: Any = None,
                     on_commit: Callable[[], None] | None = None) -> None:
        """Insert a saga, in ``within`` (an open transaction on this database) if given."""
        if within is None:
            async with self.engine.begin() as conn:
                await self._insert(conn, record, event)
            if on_commit is not None:
                on_commit()
            return
        executor = in_transaction(within, self.engine, "SagaEngine.start(within=...)")
        await self._insert(executor, record, event)
        if on_commit is not None:
            _after_commit(executor, on_commit)

    async def _insert(self, executor: Executor, record: SagaRecord, event: StepEvent) -> None:
        await executor.execute(sa.insert(_T).values(**_values(record)))
        await executor.execute(sa.insert(_E), _event_values([event]))

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
        """Take free or expired leases of active sagas, one conditional update each."""
        now = time.time()
        query = sa.select(_T.c.id).where(
            _T.c.status.in_([str(s) for s in ACTIVE]), _T.c.name.in_(list(names)), _free(now),
        ).order_by(_T.c.created_at).limit(limit)
        if saga_id is not None:
            query = query.where(_T.c.id == saga_id)
        claimed: list[SagaRecord] = []
        async with self.engine.begin() as conn:
            for (found,) in (await conn.execute(query)).all():
                result = await conn.execute(
                    sa.update(_T).where(_T.c.id == found, _free(now))
                    .values(owner=owner, lease_until=now + lease, version=_T.c.version + 1)
                    .returning(*_T.c)
                )
                row = result.first()
                if row is not None:
                    claimed.append(_record(row))
        return claimed

    async def save(self, record: SagaRecord, events: Sequence[StepEvent],
                   lease: float) -> SagaRecord:
        """Write the record and its events if version and owner still match."""
        now = time.time()
        saved = record.replace(version=record.version + 1, lease_until=now + lease,
                               updated_at=now)
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.update(_T).where(_T.c.id == record.id, _T.c.version == record.version,
                                    _T.c.owner == record.owner)
                .values(**_values(saved))
            )
            if result.rowcount != 1:
                raise SagaConflictError(f"saga {record.id} changed hands or versions meanwhile")
            if events:
                await conn.execute(sa.insert(_E), _event_values(events))
        return saved

    async def renew(self, owner: str, saga_ids: Collection[str], lease: float) -> set[str]:
        """Extend ``owner``'s leases; return the ids it still holds."""
        ids = list(saga_ids)
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.update(_T).where(_T.c.owner == owner, _T.c.id.in_(ids))
                .values(lease_until=time.time() + lease).returning(_T.c.id)
            )
            return {row.id for row in result.all()}

    async def release(self, owner: str, saga_ids: Collection[str]) -> None:
        """Drop ``owner``'s leases."""
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(_T).where(_T.c.owner == owner, _T.c.id.in_(list(saga_ids)))
                .values(owner=None, lease_until=None)
            )

    async def request_retry(self, saga_id: str, note: str = "retry requested") -> SagaRecord:
        """Put a parked saga back to work."""
        async with self.engine.begin() as conn:
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
            await conn.execute(sa.insert(_E), _event_values([event]))
        return updated


def _after_commit(executor: Executor, callback: Callable[[], None]) -> None:
    if isinstance(executor, AsyncSession):
        sa_event.listen(executor.sync_session, "after_commit",
                        lambda _session: callback(), once=True)
    elif executor.sync_connection is not None:
        sa_event.listen(executor.sync_connection, "commit", lambda _conn: callback(), once=True)
