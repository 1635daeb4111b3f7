"""Batch subscribers: a handler that takes a list of payloads.

What is fetched together runs together, up to ``max_batch`` records, each partition's in
offset order. Per record, before the handler: messages that resolve a dead letter or are
re-driven to another group are skipped, and one that cannot be decoded is dead-lettered
alone (the rest of its batch still runs). A handler that raises retries the whole batch
with the subscriber's backoff and, once the policy gives up, every record of it is
dead-lettered with the error attached (Spring Kafka's batch error handling does the same).
Messages a batch handler publishes start their own conversations (there is no single
message that caused them).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ._consumer import BatchProcess
from ._dlq import dead_letter_record, not_for
from ._errors import DecodeError
from ._handler import Handler
from ._message import Message
from ._records import OutRecord, Record
from ._retry import Retry, RetryPolicy

__all__ = ["batch_process"]

log = logging.getLogger("tidings")

Emit = Callable[[list[OutRecord]], Awaitable[Any]]


def batch_process(handler: Handler, group: str, policy: RetryPolicy, emit: Emit) -> BatchProcess:
    """The runtime's batch callback for a batch ``handler`` in ``group``."""
    decode, invoke, takes_payload = handler.decode, handler.invoke, handler.takes_payload
    wants_messages = handler.message_param is not None
    name = handler.func.__qualname__

    async def process(records: list[Record], attempt: int) -> tuple[list[Record], float] | None:
        todo: list[Record] = []
        payloads: list[Any] = []
        undecodable: list[OutRecord] = []
        for record in records:
            if not_for(record, group):
                continue
            if takes_payload:
                try:
                    payloads.append(decode(record.value))
                except DecodeError as exc:
                    log.error("%s cannot decode %s[%d]@%d, dead-lettered: %s", name,
                              record.topic, record.partition, record.offset, exc)
                    undecodable.append(dead_letter_record(record, group, exc, attempt))
                    continue
            todo.append(record)
        if undecodable:
            await emit(undecodable)
        if not todo:
            return None
        messages = [Message.from_record(r, attempt) for r in todo] if wants_messages else []
        try:
            await invoke(payloads, messages)
        except Exception as exc:
            decision = policy.decide(attempt, exc)
            if isinstance(decision, Retry):
                log.warning("%s failed on a batch of %d (attempt %d), retrying in %.2f s: %r",
                            name, len(todo), attempt, decision.delay, exc)
                return todo, decision.delay
            log.error("%s failed on a batch of %d (attempt %d), dead-lettered: %s: %r",
                      name, len(todo), attempt, decision.reason, exc)
            await emit([dead_letter_record(r, group, exc, attempt) for r in todo])
        return None

    return process
