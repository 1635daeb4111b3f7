"""The saga engine: starts saga instances, runs them, and resumes those left behind.

One engine belongs to one :class:`~tidings.App`. It starts with the app and stops with
it. While running it polls its store for active sagas whose lease is free or expired
(an instance of the service that crashed mid-saga, a saga started inside a database
transaction, or one a person asked to retry) and drives them, renewing its leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic

from .._errors import ConfigurationError, NotRunningError
from ._definition import Saga
from ._errors import SagaConflictError, SagaDefinitionError, SagaNotFoundError
from ._run import SagaRun, StepInterrupted, arm, skip_markers
from ._store import ACTIVE, Direction, SagaRecord, SagaStatus, SagaStore, StepEvent

if TYPE_CHECKING:
    from .._app import App

__all__ = ["SagaEngine"]

log = logging.getLogger("tidings.saga")

S = TypeVar("S", bound=pydantic.BaseModel)


#: At most this many starts wait for their transaction to commit with their context.
_MAX_CONTEXTS = 10_000


class SagaEngine:
    """Runs the sagas of one service.

    ``store`` persists them (a :class:`~tidings.sqlalchemy.SqlSagaStore` in the
    service's database). Each running saga holds a lease of ``lease`` seconds, renewed
    while it runs; another instance resumes it once the lease expires. The store is
    polled every ``poll_interval`` seconds for sagas to take over; at most
    ``max_running`` run at once in this process.
    """

    def __init__(self, app: App, store: SagaStore, sagas: Iterable[Saga[Any]] = (), *,
                 lease: float = 10.0, poll_interval: float = 0.5,
                 max_running: int = 100) -> None:
        if lease <= 0 or poll_interval <= 0 or max_running < 1:
            raise ConfigurationError("SagaEngine needs lease > 0, poll_interval > 0 and "
                                     "max_running >= 1")
        self._app = app
        self.store = store
        self.lease = lease
        self.poll_interval = poll_interval
        self.max_running = max_running
        self._sagas: dict[str, Saga[Any]] = {}
        for saga in sagas:
            self.register(saga)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # The context a saga started in (within a transaction), so that once it runs
        # here its steps continue the starter's trace and causation (see _spawn).
        self._contexts: dict[str, contextvars.Context] = {}
        self._waiters: dict[str, list[asyncio.Future[SagaRecord | None]]] = {}
        self._runs: dict[str, SagaRun] = {}  # the running ones: released or not
        self._poller: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        app.on_startup(self._startup)
        app.on_shutdown(self._shutdown)

    @property
    def owner(self) -> str:
        """The lease owner name of this engine (its app instance's id)."""
        return self._app.instance_id

    def register(self, saga: Saga[S]) -> Saga[S]:
        """Let this engine run (and resume) instances of ``saga``; returns it."""
        if not isinstance(saga, Saga):
            raise SagaDefinitionError(f"{saga!r} is not a Saga")
        known = self._sagas.get(saga.name)
        if known is not None and known is not saga:
            raise SagaDefinitionError(f"another saga named {saga.name!r} is registered")
        self._sagas[saga.name] = saga
        return saga

    # -- starting and looking ----------------------------------------------------------

    async def start(self, saga: Saga[S], state: S, *, saga_id: str | None = None,
                    within: Any = None) -> str:
        """Start an instance of ``saga`` with ``state``; return its id.

        Without ``within`` it is saved and starts running at once. With ``within`` (a
        transaction of the store's database, e.g. an ``AsyncSession`` inside
        ``session.begin()``) it is saved in that transaction and runs once it commits,
        so the saga exists iff the caller's writes do.
        """
        self.register(saga)
        if not isinstance(state, saga.state):
            raise ConfigurationError(f"saga {saga.name!r} takes a {saga.state.__name__} state, "
                                     f"not {type(state).__name__}")
        if self._poller is None:
            raise NotRunningError("the saga engine runs with its app: use 'async with app:'")
        saga_id = saga_id or uuid.uuid4().hex
        record, events = _first_record(saga, saga_id, state, self.owner, self.lease)
        if within is None:
            await self.store.create(record, events)
            self._spawn(record, armed=True)
            return saga_id
        while len(self._contexts) >= _MAX_CONTEXTS:  # starts whose transaction failed
            self._contexts.pop(next(iter(self._contexts)))
        self._contexts[saga_id] = contextvars.copy_context()
        # It runs here once the caller's transaction commits (and never if it does not).
        await self.store.create(record, events, within=within,
                                on_commit=lambda: self._spawn(record, armed=True))
        return saga_id

    async def get(self, saga_id: str) -> SagaRecord:
        """The saga's current record; :class:`SagaNotFoundError` if there is none."""
        record = await self.store.get(saga_id)
        if record is None:
            raise SagaNotFoundError(f"no saga with id {saga_id!r}")
        return record

    async def history(self, saga_id: str) -> list[StepEvent]:
        """The saga's step history, oldest first."""
        return await self.store.history(saga_id)

    async def wait(self, saga_id: str, timeout: float = 30.0) -> SagaRecord:
        """Wait until the saga stops being active (completed, compensated or parked):
        told by this engine's run of it, else found by looking every half second."""
        async with asyncio.timeout(timeout):
            while True:
                if saga_id in self._tasks:
                    record = await self._ran(saga_id)
                    if record is not None and record.status not in ACTIVE:
                        return record
                record = await self.get(saga_id)
                if record.status not in ACTIVE:
                    return record
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await self._ran(saga_id)

    async def _ran(self, saga_id: str) -> SagaRecord | None:
        """The last record of this engine's next run of the saga to end."""
        waiter: asyncio.Future[SagaRecord | None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(saga_id, []).append(waiter)
        try:
            return await waiter
        finally:
            waiters = self._waiters.get(saga_id, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(saga_id, None)

    async def retry(self, saga_id: str) -> SagaRecord:
        """Put a parked saga (FAILED_COMPENSATION or PARKED) back to work."""
        record = await self.store.request_retry(saga_id)
        self._poke()
        return record

    # -- running -----------------------------------------------------------------------

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _startup(self) -> None:
        self._wake = asyncio.Event()
        self._poller = asyncio.create_task(self._poll(), name="tidings-saga-poller")

    async def _shutdown(self) -> None:
        poller, self._poller = self._poller, None
        held, tasks = list(self._tasks), list(self._tasks.values())
        for task in [poller, *tasks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in [poller, *tasks] if t is not None),
                             return_exceptions=True)
        with contextlib.suppress(Exception):  # so a restarted instance resumes them at once
            await self.store.release(self.owner, held)
        self._tasks.clear()

    async def _poll(self) -> None:
        assert self._wake is not None
        while self._poller is not None:  # cleared by _shutdown, even if a cancel is lost
            try:
                await self._renew()
                await self._claim()
            except Exception:
                log.exception("saga engine: polling the store failed; will retry")
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self.poll_interval, self.lease / 3)):
                    await self._wake.wait()

    async def _renew(self) -> None:
        if not self._tasks:
            return
        asked = dict(self._tasks)
        held = await self.store.renew(self.owner, list(asked), self.lease)
        # Only the sagas asked about: one spawned while the renewal ran was not in it.
        lost = [saga_id for saga_id, task in asked.items()
                if saga_id not in held and self._tasks.get(saga_id) is task
                and not ((run := self._runs.get(saga_id)) is not None and run.releasing)]
        for saga_id in lost:
            asked[saga_id].cancel()
        for saga_id in lost:
            await self._lost(saga_id, "lease lost, another instance takes over")

    async def _lost(self, saga_id: str, why: str, level: int = logging.WARNING) -> None:
        """Log why this engine no longer runs a saga: deleted (its timers are dropped)
        or ``why``."""
        if await self.store.get(saga_id) is None:
            log.warning("saga %s was deleted while it ran or waited; its timers are dropped",
                        saga_id)
        else:
            log.log(level, "saga %s: %s", saga_id, why)

    async def _claim(self) -> None:
        room = self.max_running - len(self._tasks)
        if room <= 0 or not self._sagas:
            return
        for record in await self.store.claim(self.owner, list(self._sagas), self.lease,
                                             limit=room):
            if record.id not in self._tasks:
                self._spawn(record)

    def _spawn(self, record: SagaRecord, *, armed: bool = False) -> None:
        context = self._contexts.pop(record.id, None)
        if self._poller is None or record.id in self._tasks:
            return  # stopped (its lease expires and it is resumed) or running already
        # A saga started here runs in its starter's context (a copy, as create_task
        # makes); one resumed after a restart or by another instance starts afresh.
        task = asyncio.create_task(self._drive(record, armed), name=f"tidings-saga-{record.id}",
                                   context=context)
        self._tasks[record.id] = task
        task.add_done_callback(lambda _: self._ended(record.id))

    def _ended(self, saga_id: str) -> None:
        self._tasks.pop(saga_id, None)
        run = self._runs.pop(saga_id, None)
        for waiter in self._waiters.pop(saga_id, ()):
            if not waiter.done():
                waiter.set_result(None if run is None else run.record)

    async def _drive(self, record: SagaRecord, armed: bool) -> None:
        run = self._runs[record.id] = SagaRun(self._sagas[record.name], record, self.store,
                                              self._app, self.lease, armed=armed)
        try:
            await run.drive()
        except SagaConflictError:
            await self._lost(record.id, "moved to another instance", logging.INFO)
            return
        except StepInterrupted:
            log.info("saga %s: interrupted by the app stopping; resumed later", record.id)
            return
        except Exception:
            # Keep the lease: it expires, and the saga is resumed after that pause.
            log.exception("saga %s: the engine failed; resumed after its lease expires",
                          record.id)
            return
        if not run.released:
            with contextlib.suppress(Exception):
                await self.store.release(self.owner, [record.id])


def _first_record(saga: Saga[Any], saga_id: str, state: pydantic.BaseModel, owner: str,
                  lease: float) -> tuple[SagaRecord, list[StepEvent]]:
    """A new saga's record, held by ``owner``, and its first history lines; the first
    attempt of its first step (of each branch of a parallel one) is recorded as started
    in the same write."""
    now = time.time()
    record = SagaRecord(saga_id, saga.name, SagaStatus.RUNNING, Direction.FORWARD,
                        state.model_dump_json(), owner=owner, lease_until=now + lease)
    events = [StepEvent(saga_id, "", "saga", str(SagaStatus.RUNNING))]
    index = skip_markers(saga.steps, 0)  # steps without an action cost no write
    if index:
        record = record.replace(step=index)
    armed = arm(saga_id, saga.steps[index], "action") if index < len(saga.steps) else None
    if armed is not None:
        record = record.replace(**armed[0])
        events += armed[1]
    return record, events
