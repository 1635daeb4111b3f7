"""The SQLite transport: one database file shared by every process on the machine.

Threads (none of them ever blocks the event loop):

* a writer with its own connection: every write, appends grouped per transaction;
* a reader with its own connection: fetches and admin queries;
* a watcher polling ``PRAGMA data_version`` to notice other processes' commits;
* a checkpointer copying the WAL into the database, so commits never wait for it.

Waiting subscriptions are woken directly after this transport's own appends, and by
the watcher for everyone else's.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Mapping, Sequence

from ..._errors import (
    BrokerUnavailableError,
    ConfigurationError,
    TransportError,
    UnknownTopicError,
)
from ..._private import private_file
from ..._records import (
    GroupInfo,
    OutRecord,
    Position,
    Record,
    Start,
    TopicInfo,
    TopicPartition,
)
from ...ports import (
    BASE_CAPABILITIES,
    Capability,
    RebalanceListener,
    Subscription,
    SupportsLookup,
    Transport,
)
from . import _groups, _lookup, _reads
from ._append import Appender, TopicMeta
from ._checkpoint import Checkpointer
from ._housekeeping import Housekeeper
from ._member import GroupMember
from ._options import SqliteOptions
from ._schema import connect, create_schema
from ._subscription import FetchingSubscription, GrouplessSubscription
from ._threads import DbThread
from ._watcher import Watcher
from ._writer import WriterThread

__all__ = ["SqliteTransport"]

log = logging.getLogger("tidings.sqlite")


class SqliteTransport(Transport, SupportsLookup):
    """A durable log with consumer groups in one SQLite file (WAL mode)."""

    system = "sqlite"
    capabilities = BASE_CAPABILITIES | {Capability.LOOKUP}

    shared_between_processes = True

    def __init__(self, options: SqliteOptions) -> None:
        self.options = options
        self.max_record_bytes = options.max_record_bytes
        self._trimmed: dict[str, int] = {}
        self._path = options.path.expanduser().absolute()
        self._writer: WriterThread | None = None
        self._reader: DbThread | None = None
        self._watcher: Watcher | None = None
        self._checkpointer: Checkpointer | None = None
        self._housekeeper: Housekeeper | None = None
        self._wakes: set[asyncio.Event] = set()
        self._subscriptions: set[FetchingSubscription] = set()
        self._start_lock = asyncio.Lock()
        self._started = False
        self._closing = self._closed = False
        #: When records were last appended or fetched (monotonic); paces the watcher.
        self.last_activity = time.monotonic()

    @property
    def path(self) -> str:
        """The database file."""
        return str(self._path)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the database (creating it and its folder), start the threads."""
        if self._closed:
            raise TransportError("this SQLite transport was closed; build a new one")
        async with self._start_lock:
            if not self._started:
                await self._start()
                self._started = True

    async def _start(self) -> None:
        if self.options.read_only:
            await self._start_read_only()
            return
        try:
            private_file(self._path)  # 0600 in a 0700 folder: it holds every payload
        except OSError as exc:
            raise BrokerUnavailableError(
                f"cannot open or create the SQLite bus {self._path}: {exc}"
            ) from exc
        appender = Appender(self.options.partitions, max_length=0)
        writer = self._writer = WriterThread(
            "tidings-sqlite-write", lambda: self._open_writer(appender), appender
        )
        writer.after_wake = self._notify
        reader = self._reader = DbThread("tidings-sqlite-read", lambda: connect(self._path))
        writer.start()
        reader.start()
        try:
            await writer.call(lambda c: None)
            await reader.call(lambda c: None)
        except BaseException:
            await self._stop_threads()
            raise
        self._watcher = Watcher(
            lambda: connect(self._path), asyncio.get_running_loop(),
            self._on_external_change, lambda: bool(self._wakes), lambda: self.last_activity,
        )
        self._watcher.start()
        self._checkpointer = Checkpointer(lambda: connect(self._path), lambda: appender.written)
        self._checkpointer.start()
        self._housekeeper = Housekeeper(self)
        self._housekeeper.start()

    async def _start_read_only(self) -> None:
        # Inspection (mode=ro): only the reader thread, on a connection that cannot write;
        # no writer, watcher, checkpoints or retention, and nothing created.
        if not self._path.is_file():
            raise BrokerUnavailableError(f"no SQLite bus at {self._path} (mode=ro creates none)")
        reader = self._reader = DbThread(
            "tidings-sqlite-read", lambda: connect(self._path, read_only=True))
        reader.start()
        try:
            await reader.call(lambda c: c.execute("SELECT count(*) FROM sqlite_master"))
        except BaseException:
            await self._stop_threads()
            raise

    def _open_writer(self, appender: Appender) -> sqlite3.Connection:
        conn = connect(self._path)
        create_schema(conn)
        conn.execute("PRAGMA busy_timeout = 0")  # begin_immediate() waits with finer steps
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # the Checkpointer thread does it
        conn.execute("PRAGMA journal_size_limit = 67108864")  # shrink the WAL after bursts
        # Keep a margin below SQLite's length limit for the key, headers and row.
        appender.max_length = min(self.options.max_record_bytes,
                                  conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH) - 65536)
        return conn

    async def close(self) -> None:
        """Leave groups (revoking first), stop the threads, close connections. Idempotent."""
        if self._closing:
            return
        self._closing = True
        for subscription in list(self._subscriptions):
            try:
                await subscription.close()
            except Exception:
                log.exception("closing a subscription of %s failed", self._path)
        async with self._start_lock:  # a start in progress finishes first
            if self._housekeeper is not None:
                await self._housekeeper.stop()
            if self._watcher is not None:
                await asyncio.to_thread(self._watcher.stop)
            if self._checkpointer is not None:
                await asyncio.to_thread(self._checkpointer.stop)
            self._closed = True
            await self._stop_threads()

    async def _stop_threads(self) -> None:
        for thread in (self._writer, self._reader):
            if thread is not None:
                await thread.stop()

    @property
    def writer(self) -> WriterThread:
        """The writer thread (for this package's subscriptions)."""
        if self.options.read_only:
            raise TransportError(f"the SQLite bus {self._path} is open read-only (mode=ro)")
        if self._writer is None or self._closed:
            raise TransportError("the SQLite transport is not running")
        return self._writer

    @property
    def reader(self) -> DbThread:
        """The reader thread (for this package's subscriptions)."""
        if self._reader is None or self._closed:
            raise TransportError("the SQLite transport is not running")
        return self._reader

    def _housekeeping(self) -> Housekeeper:
        self.writer  # noqa: B018 (refuses a read-only or stopped bus)
        assert self._housekeeper is not None
        return self._housekeeper

    async def _running(self) -> None:
        if self._closing:
            raise TransportError("the SQLite transport is closed")
        if not self._started:
            await self.start()

    # -- wake-ups --------------------------------------------------------------------

    def listen(self, event: asyncio.Event) -> None:
        """Set ``event`` whenever records may have arrived."""
        self._wakes.add(event)

    def unlisten(self, event: asyncio.Event) -> None:
        """Stop setting ``event``."""
        self._wakes.discard(event)

    def _notify(self) -> None:
        for event in self._wakes:
            event.set()

    def _on_external_change(self) -> None:
        self._notify()
        if self._housekeeper is not None:
            self._housekeeper.on_change()

    # -- the port --------------------------------------------------------------------

    async def ensure_topic(self, topic: str, partitions: int | None = None) -> int:
        """Create the topic if missing (idempotent); return its partition count, which
        never changes once the topic exists (asking for fewer or more is not an error)."""
        if partitions is not None and partitions < 1:
            raise ConfigurationError(f"a topic needs at least one partition, not {partitions}")
        await self._running()
        appender = self.writer.appender
        meta = await self.writer.call(lambda c: appender.topic(c, topic, partitions))
        return len(meta.pids)

    async def ensure_topics(self, topics: Sequence[str]) -> dict[str, TopicMeta]:
        """Create missing topics with the default partition count; return their metadata."""
        await self._running()
        appender = self.writer.appender
        return await self.writer.call(lambda c: {t: appender.topic(c, t) for t in topics})

    async def append(self, records: Sequence[OutRecord]) -> list[Position]:
        """Append records; returns once they are committed (a SIGKILL right after loses
        nothing). Cancelling the call may still let the records be appended."""
        await self._running()
        if not records:
            return []
        batch = tuple(records)
        self.last_activity = time.monotonic()
        positions = await self.writer.append(batch)
        due = min((r.deliver_at for r in batch if r.deliver_at is not None), default=None)
        if due is not None and self._housekeeper is not None:
            self._housekeeper.arm(due)
        return positions

    def subscribe(
        self,
        group: str | None,
        topics: Sequence[str],
        listener: RebalanceListener,
        *,
        start: Start = Start.EARLIEST,
        client: str = "",
    ) -> Subscription:
        """Join ``group`` on ``topics``, or read them group-less when ``group`` is None.

        Joining happens in the first ``fetch``. A group-less subscription with
        ``Start.LATEST`` reads records appended after this call.
        """
        if self._closing:
            raise TransportError("the SQLite transport is closed")
        subscription: GroupMember | GrouplessSubscription
        if group is None:
            subscription = GrouplessSubscription(self, topics, listener, start)
        else:
            subscription = GroupMember(self, group, topics, listener, start, client)
        self._subscriptions.add(subscription)
        return subscription

    def forget(self, subscription: FetchingSubscription) -> None:
        """A subscription closed: stop tracking it."""
        self._subscriptions.discard(subscription)

    async def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        """Records of one partition from ``offset`` on (from the first kept record when
        retention deleted ``offset``)."""
        await self._running()

        def job(conn: sqlite3.Connection) -> list[Record]:
            pids = _reads.partition_offsets(conn, topic)
            if not 0 <= partition < len(pids):
                raise _unknown_partition(topic, partition)
            return _reads.read_range(conn, TopicPartition(topic, partition), pids[partition][0],
                                     offset, limit)

        return await self.reader.call(job)

    async def describe_topics(self) -> list[TopicInfo]:
        """Every topic with its first kept and next offsets per partition."""
        await self._running()
        return await self.reader.call(_reads.describe_topics)

    async def lookup(self, wanted: str) -> list[Record]:
        """Every record of the conversations ``wanted`` names, through a private index
        the reading connection keeps of the log (see ``_lookup``): the bus is only read."""
        await self._running()
        return await self.reader.call(lambda c: _lookup.lookup(c, wanted))

    async def prepare_lookups(self) -> None:
        """Index what was appended since the last lookup (the first time: the whole bus)."""
        await self._running()
        await self.reader.call(_lookup.catch_up)

    async def describe_groups(self) -> list[GroupInfo]:
        """Every group with live members (and their partitions) or committed offsets."""
        await self._running()
        return await self.reader.call(_groups.describe_groups)

    async def set_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Overwrite a group's committed offsets. Live owners notice within a heartbeat
        (or their next fetch) and restart the changed partitions from the new offsets;
        a member committing meanwhile may overwrite them, so reset a group while it has
        no members for exact results."""
        await self._running()
        wanted = {TopicPartition(*tp): offset for tp, offset in offsets.items()}
        await self.writer.call(lambda c: _groups.set_offsets(c, group, wanted))

    async def offsets_for_time(self, topic: str, timestamp: float) -> dict[int, int]:
        """Per partition, the first offset whose record is at or after ``timestamp``."""
        await self._running()
        return await self.reader.call(lambda c: _reads.offsets_for_time(c, topic, timestamp))

    # -- operations ------------------------------------------------------------------

    def dead_letters_trimmed(self) -> Mapping[str, int]:
        """Pending dead letters this transport's retention deleted, per topic (see
        ``dlq_retention_hours``)."""
        return dict(self._trimmed)

    def count_trimmed_dead_letters(self, topic: str, count: int) -> None:
        """Retention deleted ``count`` pending dead letters of ``topic``."""
        self._trimmed[topic] = self._trimmed.get(topic, 0) + count

    async def apply_retention(self) -> int:
        """Apply retention now (it also runs at start and every 30 s); returns the number
        of records deleted."""
        await self._running()
        return await self._housekeeping().apply_retention()

    async def deliver_due(self) -> int:
        """Move due delayed records into the log now; returns how many moved."""
        await self._running()
        return await self._housekeeping().move_due()


def _unknown_partition(topic: str, partition: int) -> UnknownTopicError:
    return UnknownTopicError(f"topic {topic!r} has no partition {partition}")

