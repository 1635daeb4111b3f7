"""What the console shows, as JSON-ready data: the same for the page and for scripts.

:class:`BusView` reads one bus (and any saga databases) and performs the actions the
console offers; it knows nothing of HTTP. Actions refuse with :class:`ActionRefused`
unless the console was started with ``--allow-actions``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from .._dlq import DeadLetter, DeadLetters
from .._errors import TidingsError
from .._lag import group_lag
from .._message import Headers
from .._parklog import park_topic, parked_keys
from .._records import Record, TopicInfo
from ..asyncapi import APPS_TOPIC
from ..ports import Transport
from ._conversation import conversation, find_records
from ._redact import redact

__all__ = ["ActionRefused", "BusView"]

_RATE_WINDOW = 10.0  # seconds over which message rates are measured
PARK_PREFIX = park_topic("")


class ActionRefused(TidingsError):
    """An action the console was not allowed to take (started without --allow-actions)."""


class BusView:
    """Read-mostly access to one bus and its saga stores (``stores``: name -> store)."""

    def __init__(self, transport: Transport, stores: dict[str, Any] | None = None, *,
                 allow_actions: bool = False) -> None:
        self.transport = transport
        self.stores = stores or {}
        self.allow_actions = allow_actions
        self._seen: list[tuple[float, dict[str, int]]] = []

    # -- reading ---------------------------------------------------------------------

    async def topics(self) -> list[dict[str, Any]]:
        """Every topic: partitions, start and end offsets, messages kept and the rate of
        appends per second over the last ~10 s (None until measured twice)."""
        infos = await self.transport.describe_topics()
        now = time.monotonic()
        totals = {t.name: sum(t.end_offsets.values()) for t in infos}
        then = next(((at, seen) for at, seen in self._seen if now - at <= _RATE_WINDOW), None)
        self._seen = [(at, seen) for at, seen in self._seen if now - at <= _RATE_WINDOW]
        self._seen.append((now, totals))
        out = []
        for info in sorted(infos, key=lambda t: t.name):
            rate = None
            if then is not None and now > then[0] and info.name in then[1]:
                rate = round((totals[info.name] - then[1][info.name]) / (now - then[0]), 2)
            out.append({
                "name": info.name, "partitions": info.partitions,
                "start_offsets": _keyed(info.start_offsets),
                "end_offsets": _keyed(info.end_offsets),
                "messages": sum(e - info.start_offsets.get(p, 0)
                                for p, e in info.end_offsets.items()),
                "rate": rate, "dead_letter_topic": info.name.endswith(".dlq"),
            })
        return out

    async def groups(self) -> list[dict[str, Any]]:
        """Every group: its members with their assignment, and lag per partition."""
        infos = {g.name: g for g in await self.transport.describe_groups()}
        lags = await group_lag(self.transport)
        out = []
        for name in sorted(infos):
            info = infos[name]
            rows = [lag for lag in lags if lag.group == name]
            out.append({
                "name": name,
                "members": [{"member_id": m.member_id, "client": m.client,
                             "assignment": [f"{tp.topic}[{tp.partition}]" for tp in m.assignment]}
                            for m in info.members],
                "lag": sum(lag.lag for lag in rows),
                "partitions": [{"topic": lag.topic, "partition": lag.partition, "end": lag.end,
                                "committed": lag.committed, "lag": lag.lag} for lag in rows],
            })
        return out

    async def dead_letters(self, topic: str) -> list[dict[str, Any]]:
        """The pending dead letters of ``topic`` (or of ``topic`` ending in ``.dlq``);
        an entry whose headers cannot be read is listed with ``malformed`` set."""
        records = await DeadLetters(self.transport, topic).pending_records()
        return [_dead_letter(record) for record in records]

    async def parked(self) -> list[dict[str, Any]]:
        """Every group's parked keys (behind a non-blocking retry or a dead letter with
        ``dead_letter="park-key"``): how many messages wait and what for."""
        return [{"group": k.group, "topic": k.topic, "partition": k.partition, "key": k.key,
                 "parked": k.count, "head": k.head, "attempt": k.attempt, "dead": k.dead,
                 "waits_for": k.waits_for} for k in await parked_keys(self.transport)]

    async def conversation(self, wanted: str) -> dict[str, Any]:
        """The timeline of the conversation(s) ``wanted`` names: a correlation id, a
        message id or a key; ``messages`` is empty (with a note) when nothing matches."""
        topics = await self.transport.describe_topics()
        records = [r for r in await find_records(self.transport, wanted, _readable(topics))
                   if _is_readable(r.topic)]
        timeline = conversation(records, await self.transport.describe_groups())
        for message in timeline:
            message["payload"] = redact(message["payload"])
        note = None if timeline else f"no messages for {wanted}"
        return {"id": wanted, "messages": timeline, "note": note}

    async def sagas(self, limit: int = 50) -> list[dict[str, Any]]:
        """Per saga database: counts by status and the newest sagas with their history."""
        out = []
        for name, store in self.stores.items():
            counts = await store.count_by_status()
            records = await store.find(limit=limit)
            sagas = [_saga(r, await store.history(r.id)) for r in records]
            out.append({"db": name, "counts": {str(k): v for k, v in counts.items()},
                        "sagas": sagas})
        return out

    # -- actions ---------------------------------------------------------------------

    def check_allowed(self, action: str) -> None:
        """Raise :class:`ActionRefused` unless actions are allowed."""
        if not self.allow_actions:
            raise ActionRefused(f"{action} refused: start the console with --allow-actions "
                                "to re-drive, purge or retry")

    async def redrive(self, topic: str, position: tuple[int, int] | None) -> int:
        """Re-drive one pending dead letter of ``topic`` (or all); returns how many."""
        self.check_allowed("re-drive")
        queue = DeadLetters(self.transport, topic)
        if position is None:
            records = await queue.pending_records()
            entries = [e for e in map(_parsed, records) if e is not None]
            return await queue.redrive(entries) if entries else 0
        entry = _parsed(await _pending_at(queue, position))
        if entry is None:
            raise ValueError("a malformed dead letter cannot be re-driven; purge it")
        return await queue.redrive([entry])

    async def purge(self, topic: str, position: tuple[int, int] | None) -> int:
        """Purge one pending dead letter of ``topic`` (or all); returns how many."""
        self.check_allowed("purge")
        queue = DeadLetters(self.transport, topic)
        if position is not None:
            await _pending_at(queue, position)
        return await queue.purge(None if position is None else [position])

    async def retry_saga(self, db: str, saga_id: str) -> dict[str, Any]:
        """Put a parked saga back to work (its service resumes it)."""
        self.check_allowed("saga retry")
        store = self.stores.get(db)
        if store is None:
            raise LookupError(f"no saga database {db!r}")
        record = await store.request_retry(saga_id, "retry requested from the console")
        return _saga(record, await store.history(saga_id))


async def _pending_at(queue: DeadLetters, position: tuple[int, int]) -> Record:
    for record in await queue.pending_records():
        if (record.partition, record.offset) == position:
            return record
    raise LookupError(f"no pending dead letter at {queue.dlq}[{position[0]}]@{position[1]}")


def _readable(topics: Sequence[TopicInfo]) -> list[TopicInfo]:
    """Topics a conversation can be in (not app docs, not park logs)."""
    return [t for t in topics if _is_readable(t.name)]


def _is_readable(topic: str) -> bool:
    """Whether ``topic`` holds messages, not app documents or parked copies (a parked
    message is shown where it was published; ``parked`` lists what is parked)."""
    return topic != APPS_TOPIC and not topic.startswith(PARK_PREFIX)


def _keyed(offsets: Any) -> dict[str, int]:
    return {str(p): o for p, o in sorted(offsets.items())}


def _parsed(record: Record) -> DeadLetter | None:
    try:
        return DeadLetter.from_record(record)
    except ValueError:
        return None


def _dead_letter(record: Record) -> dict[str, Any]:
    entry = _parsed(record)
    h = record.headers
    base = {"position": f"{record.partition}:{record.offset}", "key": record.key,
            "id": h.get(Headers.ID), "payload": redact(_text(record.value)),
            "malformed": entry is None or not entry.original_topic}
    if entry is None:
        return base | {"error_type": None, "error_message": "malformed dead-letter headers",
                       "group": h.get(Headers.DLQ_GROUP), "attempts": None,
                       "failed_at": None, "original": None}
    return base | {
        "original": f"{entry.original_topic}[{entry.original_partition}]@{entry.original_offset}",
        "group": entry.group, "error_type": entry.error_type,
        "error_message": entry.error_message, "attempts": entry.attempts,
        "failed_at": _when(entry.failed_at),
    }


def _text(value: bytes) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value.decode("utf-8", "replace")


def _when(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at).isoformat(timespec="milliseconds")


def _saga(record: Any, history: Sequence[Any]) -> dict[str, Any]:
    return {"id": record.id, "name": record.name, "status": str(record.status),
            "step": record.step, "direction": str(record.direction),
            "attempts": record.attempts, "error": record.error,
            "updated_at": _when(record.updated_at),
            "history": [{"at": _when(e.at), "step": e.step, "phase": e.phase,
                         "outcome": e.outcome, "attempt": e.attempt, "error": e.error}
                        for e in history]}
