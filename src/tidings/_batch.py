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
from typing import Any

from ._consumer import BatchProcess
from ._dlq import dead_letter_record, not_for
from ._errors import DecodeError
from ._message import Message
from ._middleware import HandlerCall, handler_chain
from ._process import Runtime, decide
from ._records import OutRecord, Record
from ._subscriber import SubscriberSpec

__all__ = ["batch_process"]

log = logging.getLogger("tidings")


def batch_process(spec: SubscriberSpec, runtime: Runtime) -> BatchProcess:
    """The runtime's batch callback for ``spec``'s batch handler."""
    handler, group, policy, emit = spec.handler, spec.group, spec.retry, runtime.emit
    decode, invoke, takes_payload = handler.decode, handler.invoke, handler.takes_payload
    name = handler.func.__qualname__
    async def inner(call: HandlerCall) -> Any:
        try:
            return await invoke(call.payload, call.messages)
        except Exception as exc:
            decide(call, policy, exc)
            raise

    chain = handler_chain(runtime.middlewares, inner)
    wants_messages = handler.message_param is not None or chain is not None

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
            await emit(undecodable, "dead-letter")
        if not todo:
            return None
        messages = [Message.from_record(r, attempt) for r in todo] if wants_messages else []
        call = HandlerCall(runtime.app, "batch", name, group, runtime.system, messages, attempt,
                           payload=payloads)
        try:
            await (invoke(payloads, messages) if chain is None else chain(call))
        except Exception as exc:
            decide(call, policy, exc)
            if call.retry_in is not None:
                log.warning("%s failed on a batch of %d (attempt %d), retrying in %.2f s: %r",
                            name, len(todo), attempt, call.retry_in, exc)
                return todo, call.retry_in
            log.error("%s failed on a batch of %d (attempt %d), dead-lettered: %s: %r",
                      name, len(todo), attempt, call.reason, exc)
            await emit([dead_letter_record(r, group, exc, attempt) for r in todo], "dead-letter")
        return None

    return process
