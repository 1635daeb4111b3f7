"""What the saga engine persists, the storage port, and an in-memory store for tests.

A store keeps one :class:`SagaRecord` per saga instance and its step history. Every
write is conditional on the record's ``version`` and on the writer holding the lease,
so two instances of a service never advance the same saga.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from ._errors import SagaConflictError, SagaError, SagaNotFoundError

__all__ = [
    "ACTIVE",
    "PARKED_STATES",
    "Direction",
    "MemorySagaStore",
    "SagaRecord",
    "SagaStatus",
    "SagaStore",
    "StepEvent",
]


class SagaStatus(enum.StrEnum):
    """Where a saga instance is."""

    RUNNING = "RUNNING"
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    COMPENSATED = "COMPENSATED"
    FAILED_COMPENSATION = "FAILED_COMPENSATION"
    PARKED = "PARKED"


class Direction(enum.StrEnum):
    """Whether the saga runs actions forward or compensations backward."""

    FORWARD = "forward"
    BACKWARD = "backward"


#: Statuses an engine works on.
ACTIVE = frozenset({SagaStatus.RUNNING, SagaStatus.COMPENSATING})
#: Statuses that wait for a person (``tidings sagas retry``).
PARKED_STATES = frozenset({SagaStatus.FAILED_COMPENSATION, SagaStatus.PARKED})


@dataclass(frozen=True, slots=True)
class StepEvent:
    """One line of a saga's history.

    ``phase`` is ``action``, ``compensation`` or ``saga`` (a transition of the whole
    saga); ``outcome`` is ``started``, ``succeeded``, ``failed``, ``timed_out``, or the
    saga's new status for a ``saga`` event.
    """

    saga_id: str
    step: str
    phase: str
    outcome: str
    attempt: int = 0
    error: str | None = None
    at: float = dataclasses.field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class SagaRecord:
    """One persisted saga instance.

    ``step`` is the index of the next action to run (forward) or of the next
    compensation to run (backward); ``attempts`` counts attempts at that one, written
    before each attempt starts, so a crash counts as a failed attempt. The timers are
    stored, never only slept in memory: ``wake_at`` is when the next attempt (or a
    sleeping step) may go on (None while an attempt runs), and ``deadline`` when the
    running attempt times out, so an attempt cut short by a crash times out at its
    stored time. ``branches`` is the JSON progress of a parallel step's branches.
    """

    id: str
    name: str
    status: SagaStatus
    direction: Direction
    state: str  # JSON of the state model
    step: int = 0
    attempts: int = 0
    error: str | None = None
    version: int = 0
    owner: str | None = None
    lease_until: float | None = None
    created_at: float = dataclasses.field(default_factory=time.time)
    updated_at: float = dataclasses.field(default_factory=time.time)
    wake_at: float | None = None
    deadline: float | None = None
    branches: str | None = None

    def replace(self, **changes: Any) -> SagaRecord:
        """A copy with ``changes`` applied."""
        # Twice as fast as dataclasses.replace (a saga step makes two or three copies).
        unknown = changes.keys() - _RECORD_FIELDS
        if unknown:
            raise TypeError(f"SagaRecord has no field {sorted(unknown)[0]!r}")
        copy = object.__new__(SagaRecord)
        for name in _RECORD_FIELDS:
            object.__setattr__(copy, name, changes[name] if name in changes
                               else getattr(self, name))
        return copy


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(SagaRecord))


def _fast_replace() -> Any:
    """``SagaRecord.replace`` as code generated for its fields: a keyword per field and
    each slot set directly (a third of the cost of a loop over the fields; a saga step
    makes two or three copies). An unknown field is a TypeError, as before."""
    keep = object()
    scope: dict[str, Any] = {"_KEEP": keep, "_new": object.__new__, "_cls": SagaRecord}
    for name in _RECORD_FIELDS:
        scope[f"_set_{name}"] = SagaRecord.__dict__[name].__set__
    source = ("def replace(self, *, " + ", ".join(f"{n}=_KEEP" for n in _RECORD_FIELDS)
              + "):\n    copy = _new(_cls)\n"
              + "".join(f"    _set_{n}(copy, self.{n} if {n} is _KEEP else {n})\n"
                        for n in _RECORD_FIELDS)
              + "    return copy\n")
    exec(source, scope)  # our own field names only
    replace = scope["replace"]
    replace.__doc__ = SagaRecord.replace.__doc__
    return replace


SagaRecord.replace = _fast_replace()  # type: ignore[method-assign]


class SagaStore(abc.ABC):
    """Where saga instances live: the service's database in production."""

    @abc.abstractmethod
    async def create(self, record: SagaRecord, events: Sequence[StepEvent], *,
                     within: Any = None, on_commit: Callable[[], None] | None = None) -> None:
        """Insert a new saga and its first history lines. ``within`` is a transaction of
        the store's database (for a SQL store, an ``AsyncSession`` or
        ``AsyncConnection``) so the saga starts iff the caller's own writes commit;
        ``on_commit`` is called once it has."""

    @abc.abstractmethod
    async def get(self, saga_id: str) -> SagaRecord | None:
        """The saga with this id, or None."""

    @abc.abstractmethod
    async def find(self, *, statuses: Collection[SagaStatus] = (), name: str | None = None,
                   limit: int = 100) -> list[SagaRecord]:
        """Sagas, newest first, optionally filtered by status and name."""

    @abc.abstractmethod
    async def history(self, saga_id: str) -> list[StepEvent]:
        """The saga's step history, oldest first."""

    async def count_by_status(self) -> dict[SagaStatus, int]:
        """How many sagas are in each status (for metrics); stores may count faster."""
        counts: dict[SagaStatus, int] = {}
        for status in SagaStatus:
            found = await self.find(statuses=[status], limit=1_000_000)
            counts[status] = len(found)
        return counts

    @abc.abstractmethod
    async def claim(self, owner: str, names: Collection[str], lease: float, *,
                    saga_id: str | None = None, limit: int = 10) -> list[SagaRecord]:
        """Take the lease of active sagas (of these definition names) that nobody holds or
        whose lease expired, and whose ``wake_at`` is not in the future; only ``saga_id``
        if given. Returns the claimed records."""

    @abc.abstractmethod
    async def save(self, record: SagaRecord, events: Sequence[StepEvent], lease: float, *,
                   release: bool = False) -> SagaRecord:
        """Write ``record`` (and append ``events``) if its stored version is
        ``record.version`` and ``record.owner`` still holds the lease; return it with the
        new version and lease (none, and no owner, with ``release``: the same write
        gives the saga up). Raise :class:`SagaConflictError` otherwise."""

    @abc.abstractmethod
    async def renew(self, owner: str, saga_ids: Collection[str], lease: float) -> set[str]:
        """Extend ``owner``'s leases; return the ids it still holds."""

    @abc.abstractmethod
    async def release(self, owner: str, saga_ids: Collection[str]) -> None:
        """Give up ``owner``'s leases so another instance can take over at once."""

    @abc.abstractmethod
    async def request_retry(self, saga_id: str, note: str = "retry requested") -> SagaRecord:
        """Put a parked saga back to work (RUNNING or COMPENSATING, attempts reset,
        no owner); raise :class:`SagaError` if it is not parked."""


def saved(record: SagaRecord, lease: float, release: bool) -> SagaRecord:
    """``record`` as :meth:`SagaStore.save` writes it: the next version, the lease renewed
    (or given up with ``release``)."""
    now = time.time()
    if release:
        return record.replace(version=record.version + 1, owner=None, lease_until=None,
                              updated_at=now)
    return record.replace(version=record.version + 1, lease_until=now + lease, updated_at=now)


def retried(record: SagaRecord) -> SagaRecord:
    """What a parked saga becomes when a person asks to retry it."""
    if record.status not in PARKED_STATES:
        raise SagaError(f"saga {record.id} is {record.status}, not parked: nothing to retry")
    status = SagaStatus.RUNNING if record.direction is Direction.FORWARD else \
        SagaStatus.COMPENSATING
    return record.replace(status=status, attempts=0, error=None, owner=None,
                          lease_until=None, version=record.version + 1,
                          updated_at=time.time(), wake_at=None, deadline=None)


class MemorySagaStore(SagaStore):
    """A store in process memory, with the same conditional writes as a database."""

    def __init__(self) -> None:
        self._records: dict[str, SagaRecord] = {}
        self._events: dict[str, list[StepEvent]] = {}

    async def create(self, record: SagaRecord, events: Sequence[StepEvent], *,
                     within: Any = None, on_commit: Callable[[], None] | None = None) -> None:
        """Insert a new saga (``within`` is not supported here)."""
        if within is not None:
            raise SagaError("MemorySagaStore has no transactions to join (within=)")
        if record.id in self._records:
            raise SagaError(f"a saga with id {record.id!r} exists already")
        self._records[record.id] = record
        self._events[record.id] = list(events)
        if on_commit is not None:
            on_commit()

    async def get(self, saga_id: str) -> SagaRecord | None:
        """The saga with this id, or None."""
        return self._records.get(saga_id)

    async def find(self, *, statuses: Collection[SagaStatus] = (), name: str | None = None,
                   limit: int = 100) -> list[SagaRecord]:
        """Sagas, newest first."""
        found = [r for r in self._records.values()
                 if (not statuses or r.status in statuses) and (name is None or r.name == name)]
        return sorted(found, key=lambda r: r.created_at, reverse=True)[:limit]

    async def history(self, saga_id: str) -> list[StepEvent]:
        """The saga's step history."""
        return list(self._events.get(saga_id, []))

    async def claim(self, owner: str, names: Collection[str], lease: float, *,
                    saga_id: str | None = None, limit: int = 10) -> list[SagaRecord]:
        """Take free or expired leases of active sagas."""
        now = time.time()
        claimed: list[SagaRecord] = []
        for record in list(self._records.values()):
            if len(claimed) >= limit:
                break
            if saga_id is not None and record.id != saga_id:
                continue
            free = record.owner is None or (record.lease_until or 0) < now
            due = record.wake_at is None or record.wake_at <= now
            if record.status in ACTIVE and record.name in names and free and due:
                record = record.replace(owner=owner, lease_until=now + lease,
                                        version=record.version + 1)
                self._records[record.id] = record
                claimed.append(record)
        return claimed

    async def save(self, record: SagaRecord, events: Sequence[StepEvent], lease: float, *,
                   release: bool = False) -> SagaRecord:
        """Conditional write: same version, lease still held."""
        current = self._records.get(record.id)
        if current is None:
            raise SagaNotFoundError(record.id)
        if current.version != record.version or current.owner != record.owner:
            raise SagaConflictError(f"saga {record.id} changed hands or versions meanwhile")
        written = saved(record, lease, release)
        self._records[record.id] = written
        self._events[record.id].extend(events)
        return written

    async def renew(self, owner: str, saga_ids: Collection[str], lease: float) -> set[str]:
        """Extend leases still held by ``owner``."""
        held = set()
        for saga_id in saga_ids:
            record = self._records.get(saga_id)
            if record is not None and record.owner == owner:
                self._records[saga_id] = record.replace(lease_until=time.time() + lease)
                held.add(saga_id)
        return held

    async def release(self, owner: str, saga_ids: Collection[str]) -> None:
        """Drop ``owner``'s leases."""
        for saga_id in saga_ids:
            record = self._records.get(saga_id)
            if record is not None and record.owner == owner:
                self._records[saga_id] = record.replace(owner=None, lease_until=None)

    async def request_retry(self, saga_id: str, note: str = "retry requested") -> SagaRecord:
        """Put a parked saga back to work."""
        record = self._records.get(saga_id)
        if record is None:
            raise SagaNotFoundError(f"no saga with id {saga_id!r}")
        updated = retried(record)
        self._records[saga_id] = updated
        self._events[saga_id].append(StepEvent(saga_id, "", "saga", str(updated.status),
                                               error=note))
        return updated
