"""A named lease in the database: which instance of a service does a singleton job."""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ._group import GroupCommit
from ._schema import leases_table
from ._sql import insert_if_absent

__all__ = ["Lease"]


class Lease:
    """Held by at most one ``owner`` at a time until ``duration`` seconds after its last
    renewal; another owner may take it once it expired."""

    def __init__(self, engine: AsyncEngine, name: str, owner: str, duration: float) -> None:
        self._engine = engine
        self.name = name
        self.owner = owner
        self.duration = duration
        self._held_until = 0.0

    @property
    def held(self) -> bool:
        """Whether this owner held the lease at its last acquisition and it has not run out."""
        return time.time() < self._held_until

    async def acquire(self) -> bool:
        """Take or renew the lease; return whether this owner holds it now. Renewals
        happen once a third of the lease has passed, so holding it costs few writes."""
        now = time.time()
        if now < self._held_until - self.duration * 2 / 3:
            return True
        table = leases_table

        async def take(conn: AsyncConnection) -> bool:
            result = await conn.execute(
                sa.update(table)
                .where(table.c.name == self.name,
                       sa.or_(table.c.owner == self.owner, table.c.expires_at < now))
                .values(owner=self.owner, expires_at=now + self.duration)
            )
            return result.rowcount == 1 or await insert_if_absent(
                conn, table, {"name": self.name, "owner": self.owner,
                              "expires_at": now + self.duration})

        got = await GroupCommit.of(self._engine).run(take)
        self._held_until = now + self.duration if got else 0.0
        return got

    async def release(self) -> None:
        """Give the lease up, so another owner need not wait for it to expire."""
        self._held_until = 0.0
        table = leases_table
        statement = sa.delete(table).where(table.c.name == self.name,
                                           table.c.owner == self.owner)
        await GroupCommit.of(self._engine).run(lambda conn: conn.execute(statement))
