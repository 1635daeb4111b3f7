"""Running projections: stored events in, read-model writes and the position out, in
one transaction per batch.

Each batch reads the events after the projection's position, runs its handlers in a
session, and moves the position with a compare-and-set, all in one transaction. A
crash anywhere rolls the whole batch back, read model included, so it is done again
from the same position: no event is counted twice, none is skipped. Two runners of one
projection (two service instances) cannot both commit a batch: the slower one's
compare-and-set fails and its batch rolls back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..._errors import ConfigurationError
from ..._waiting import cancel_and_wait
from ...sqlalchemy._sql import insert_if_absent
from .._errors import ProjectionError, UpcastError
from .._projection import Projection
from ._schema import events_table, projections_table
from ._store import EventStore

if TYPE_CHECKING:
    from ..._app import App

__all__ = ["ProjectionStatus", "Projections"]

log = logging.getLogger("tidings.projections")

#: ``progress(done, total)``: events read so far, and how many there were to read.
Progress = Callable[[int, int], None]


class _Moved(Exception):
    """Another runner moved the position meanwhile; this batch is rolled back."""


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    """Where a projection is: its position, the store's head, how far behind it is."""

    name: str
    position: int
    head: int
    lag: int
    error: str | None
    updated_at: float | None


class Projections:
    """The projections of one event store, and the runner that keeps them up to date.

    ``attach(app)`` runs them in the background while the app runs; ``catch_up`` and
    ``rebuild`` run one to the store's head (the CLI's ``tidings projections rebuild``).
    """

    def __init__(self, store: EventStore, *projections: Projection, batch: int = 500,
                 interval: float = 0.2,
                 sessions: async_sessionmaker[AsyncSession] | None = None) -> None:
        if batch < 1 or interval <= 0:
            raise ConfigurationError("projections need batch >= 1 and interval > 0")
        self.store = store
        self.batch = batch
        self.interval = interval
        self._sessions = sessions or async_sessionmaker(store.engine, expire_on_commit=False)
        self._projections: dict[str, Projection] = {}
        self._task: asyncio.Task[None] | None = None
        self._known: set[str] = set()
        for projection in projections:
            self.add(projection)

    def add(self, projection: Projection) -> Projection:
        """Add a projection (its event classes must be registered with the store)."""
        if projection.name in self._projections:
            raise ConfigurationError(f"two projections are named {projection.name!r}")
        for cls in projection.event_classes:
            if cls not in self.store.events:
                raise ConfigurationError(
                    f"projection {projection.name!r} handles {cls.__qualname__}, which the "
                    "event store's registry does not know: add it with EventRegistry.add()")
        self._projections[projection.name] = projection
        return projection

    def __getitem__(self, name: str) -> Projection:
        try:
            return self._projections[name]
        except KeyError:
            known = ", ".join(sorted(self._projections)) or "none"
            raise ConfigurationError(f"no projection {name!r} (known: {known})") from None

    def __iter__(self) -> Iterator[Projection]:
        return iter(self._projections.values())

    # -- one batch -----------------------------------------------------------------------

    async def run_once(self, name: str) -> int:
        """Handle one batch of projection ``name``'s new events; return how many events
        were read (0: it is at the head). Raises :class:`ProjectionError` or
        :class:`UpcastError` for an event it cannot handle; nothing of that batch stays."""
        projection = self[name]
        try:
            async with self._sessions() as session, session.begin():
                position = await self._position(session, name)
                rows = await self._rows(session, position)
                for row in rows:
                    await self._handle(projection, row, session)
                if rows:
                    await projection.end_batch(session)
                    await self._advance(session, name, position, rows[-1].position)
        except _Moved:
            return 0
        return len(rows)

    async def _position(self, session: AsyncSession, name: str) -> int:
        table = projections_table
        if name not in self._known:
            await insert_if_absent(session, table, {"name": name, "position": 0,
                                                    "updated_at": time.time()})
            self._known.add(name)
        # FOR UPDATE (PostgreSQL) makes a second runner wait instead of doing the same work.
        value = await session.scalar(sa.select(table.c.position).where(table.c.name == name)
                                     .with_for_update())
        return int(value or 0)

    async def _rows(self, session: AsyncSession, position: int) -> Sequence[Any]:
        table = events_table
        return (await session.execute(sa.select(table).where(table.c.position > position)
                                      .order_by(table.c.position).limit(self.batch))).all()

    async def _handle(self, projection: Projection, row: Any, session: AsyncSession) -> None:
        entry = self.store.events.get(row.event_type)
        if entry is None or not projection.handles(entry.cls):
            return  # not this projection's business; an unknown name has no handler here
        recorded = self.store.recorded(row)
        handler = projection.handler_for(recorded)
        if handler is None:
            return
        try:
            await handler(recorded, session)
        except Exception as exc:
            raise ProjectionError(projection.name, row.position, row.stream_id, row.version,
                                  f"{type(exc).__name__}: {exc}") from exc

    async def _advance(self, session: AsyncSession, name: str, old: int, new: int) -> None:
        table = projections_table
        result = await session.execute(
            sa.update(table).where(table.c.name == name, table.c.position == old)
            .values(position=new, updated_at=time.time(), error=None))
        if getattr(result, "rowcount", 1) != 1:
            raise _Moved

    # -- to the head ---------------------------------------------------------------------

    async def catch_up(self, name: str, *, progress: Progress | None = None) -> int:
        """Run projection ``name`` until it reaches the store's head; return how many
        events it read. ``progress(done, total)`` is called after every batch."""
        self[name]
        total = await self._remaining(name)
        done = 0
        if progress is not None:
            progress(0, total)
        while True:
            count = await self.run_once(name)
            if count == 0:
                return done
            done += count
            if progress is not None:
                progress(done, max(total, done))

    async def rebuild(self, name: str, *, progress: Progress | None = None) -> int:
        """Clear projection ``name`` (its reset handlers) and move it back to the start in
        one transaction, then run it to the head; return how many events it read."""
        projection = self[name]
        async with self._sessions() as session, session.begin():
            await projection.reset(session)
            await self._position(session, name)
            table = projections_table
            await session.execute(sa.update(table).where(table.c.name == name)
                                  .values(position=0, updated_at=time.time(), error=None))
        log.info("projection %s reset; rebuilding", name)
        return await self.catch_up(name, progress=progress)

    async def _remaining(self, name: str) -> int:
        table, events = projections_table, events_table
        async with self._sessions() as session:
            position = await session.scalar(
                sa.select(table.c.position).where(table.c.name == name))
            count = await session.scalar(sa.select(sa.func.count()).select_from(events)
                                         .where(events.c.position > (position or 0)))
        return int(count or 0)

    async def status(self) -> list[ProjectionStatus]:
        """Position, lag and last error of every projection."""
        head = await self.store.head()
        table = projections_table
        async with self._sessions() as session:
            rows = {r.name: r for r in (await session.execute(sa.select(table))).all()}
        result = []
        for name in sorted(self._projections):
            row = rows.get(name)
            position = int(row.position) if row is not None else 0
            result.append(ProjectionStatus(name, position, head, max(head - position, 0),
                                           row.error if row else None,
                                           row.updated_at if row else None))
        return result

    # -- in the background -------------------------------------------------------------

    def attach(self, app: App) -> Projections:
        """Keep every projection up to date while ``app`` runs."""
        app.on_startup(self.start)
        app.on_shutdown(self.stop)
        return self

    async def start(self) -> None:
        """Start following the store in a background task."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="tidings-projections")

    async def stop(self) -> None:
        """Stop following; a batch in progress is rolled back and done again next time."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def __aenter__(self) -> Projections:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _loop(self) -> None:
        paused: dict[str, tuple[float, float]] = {}  # name -> (until, last pause)
        while True:
            busy = False
            for name in list(self._projections):
                until, pause = paused.get(name, (0.0, 0.0))
                if time.monotonic() < until:
                    continue
                try:
                    busy |= await self.run_once(name) > 0
                    paused.pop(name, None)
                except (ProjectionError, UpcastError) as exc:
                    pause = min(max(pause * 2, 1.0), 30.0)
                    paused[name] = (time.monotonic() + pause, pause)
                    log.error("%s; retrying in %.0f s", exc, pause)
                    await self._record_error(name, str(exc))
                except Exception as exc:  # the database is away: keep following
                    log.warning("projection %s failed, retrying in 1 s: %r", name, exc)
                    paused[name] = (time.monotonic() + 1.0, pause)
            if not busy:
                await asyncio.sleep(self.interval)

    async def _record_error(self, name: str, error: str) -> None:
        table = projections_table
        with contextlib.suppress(Exception):
            async with self._sessions() as session, session.begin():
                await session.execute(sa.update(table).where(table.c.name == name)
                                      .values(error=error[:2000]))
