"""Work queues with priorities, built on topics: one topic per priority level.

Queue ``emails`` is stored as topics ``emails.p0`` .. ``emails.p9``; its workers form
one group, so each item goes to exactly one worker, and they run the highest priority
item they hold first.
"""

from __future__ import annotations

from ._message import Headers
from ._records import Record

__all__ = ["PRIORITIES", "queue_group", "queue_priority", "queue_topics"]

PRIORITIES = range(10)


def queue_topics(queue: str) -> tuple[str, ...]:
    """The topics of work queue ``queue``, indexed by priority."""
    return tuple(f"{queue}.p{level}" for level in PRIORITIES)


def queue_group(queue: str) -> str:
    """The consumer group every worker of ``queue`` joins."""
    return f"{queue}.workers"


def queue_priority(record: Record) -> int:
    """The priority of a work item (from its header; 0 if missing or malformed)."""
    raw = record.headers.get(Headers.PRIORITY, "0")
    return int(raw) if raw.isdigit() else 0
