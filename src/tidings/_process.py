"""Calling a subscriber's handler for one record: decode, invoke, reply, retry or
dead-letter, through the app's middleware chain when it has one.

:func:`message_process` builds, once per subscriber, the callback every dispatch
strategy calls. Without handler middleware it is the direct path (no envelope is built
for a handler that takes none). With middleware, the chain wraps decoding, the handler
and a responder's reply; when the handler raises, the retry decision is made inside the
chain (so middlewares see it on the :class:`~tidings.HandlerCall`) and the dead letter
is appended after it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._codec import encode
from ._consumer import Process
from ._dlq import dead_letter_record, not_for
from ._message import Headers, Message, current_message
from ._middleware import CallNext, HandlerCall, Middleware, handler_chain
from ._parking import DEAD
from ._records import OutRecord, Position, Record
from ._reply import REPLIES_TOPIC
from ._retry import Retry, RetryPolicy
from ._subscriber import Role, SubscriberSpec
from ._transaction import discard_held

__all__ = ["Emit", "Runtime", "decide", "message_process"]

log = logging.getLogger("tidings")

#: Append records of a kind ("publish", "reply", "dead-letter", ...) through the app.
Emit = Callable[[list[OutRecord], str], Awaitable[Sequence[Position]]]


@dataclass(frozen=True, slots=True)
class Runtime:
    """What handler calls need from their app."""

    app: str
    system: str
    emit: Emit
    middlewares: Sequence[Middleware]


def decide(call: HandlerCall, policy: RetryPolicy, exc: Exception) -> None:
    """Record on ``call`` what follows its failure: a retry after a delay, or a dead
    letter (a decision already made inside the chain stands)."""
    if call.retry_in is not None or call.dead_lettered:
        return
    decision = policy.decide(call.attempt, exc)
    if isinstance(decision, Retry):
        call.retry_in = decision.delay
    else:
        call.dead_lettered, call.reason = True, decision.reason


def message_process(spec: SubscriberSpec, runtime: Runtime) -> Process:
    """The consumer's per-record callback for ``spec``'s handler."""
    inner = _inner(spec, runtime)
    chain = handler_chain(runtime.middlewares, inner)
    if chain is None:
        return _direct(spec, runtime)
    return _chained(spec, runtime, chain)


def _direct(spec: SubscriberSpec, runtime: Runtime) -> Process:
    handler, policy, group = spec.handler, spec.retry, spec.group
    replies = spec.role is Role.RESPONDER
    decode, invoke, takes_payload = handler.decode, handler.invoke, handler.takes_payload
    wants_message = handler.message_param is not None
    set_current, reset_current = current_message.var.set, current_message.var.reset
    emit, name = runtime.emit, handler.func.__qualname__

    async def process(record: Record, attempt: int) -> float | None:
        if not_for(record, group):
            return None
        # A first delivery to a handler that takes no Message leaves the envelope
        # unbuilt: current_message makes it if anyone asks (see _message).
        message = Message.from_record(record, attempt) \
            if wants_message or attempt > 1 else None
        token = set_current(message if message is not None else record)
        try:
            payload = decode(record.value) if takes_payload else None
            result = await invoke(payload, message)
        except Exception as exc:
            if replies:
                await _reply(emit, record.headers, exc)
                return None
            discard_held()  # a failed attempt published nothing
            decision = policy.decide(attempt, exc)
            if isinstance(decision, Retry):
                return await _failed(emit, record, group, attempt, exc, name, decision.delay)
            return await _failed(emit, record, group, attempt, exc, name, None, decision.reason)
        finally:
            reset_current(token)
        if replies:
            await _reply(emit, record.headers, result)
        return None

    return process


def _inner(spec: SubscriberSpec, runtime: Runtime) -> CallNext:
    """The innermost step of a chain: decode, call the handler, reply."""
    handler, policy = spec.handler, spec.retry
    replies = spec.role is Role.RESPONDER
    decode, invoke, takes_payload = handler.decode, handler.invoke, handler.takes_payload
    emit = runtime.emit

    async def inner(call: HandlerCall) -> Any:
        message = call.message
        try:
            call.payload = decode(message.body) if takes_payload else None
            result = await invoke(call.payload, message)
        except Exception as exc:
            if not replies:
                decide(call, policy, exc)
                raise
            call.error, result = exc, exc
        if replies:
            await _reply(emit, message.headers, result)
        return result

    return inner


def _chained(spec: SubscriberSpec, runtime: Runtime, chain: CallNext) -> Process:
    policy, group = spec.retry, spec.group
    set_current, reset_current = current_message.var.set, current_message.var.reset
    emit, name, kind = runtime.emit, spec.handler.func.__qualname__, spec.role.value

    async def process(record: Record, attempt: int) -> float | None:
        if not_for(record, group):
            return None
        message = Message.from_record(record, attempt)
        token = set_current(message)
        call = HandlerCall(runtime.app, kind, name, group, runtime.system, (message,), attempt)
        try:
            await chain(call)
        except Exception as exc:  # the handler's, or a middleware's own
            discard_held()
            decide(call, policy, exc)
            return await _failed(emit, record, group, attempt, exc, name, call.retry_in,
                                 call.reason)
        finally:
            reset_current(token)
        return None

    return process


async def _failed(emit: Emit, record: Record, group: str | None, attempt: int,
                  exc: Exception, name: str, retry_in: float | None,
                  reason: str | None = None) -> float | None:
    """Log the failure; dead-letter the record unless it is retried in ``retry_in`` s
    (then :data:`~tidings._parking.DEAD` tells the consumer it was dead-lettered)."""
    where = f"{record.topic}[{record.partition}]@{record.offset}"
    if retry_in is not None:
        log.warning("%s failed on %s (attempt %d), retrying in %.2f s: %r",
                    name, where, attempt, retry_in, exc)
        return retry_in
    log.error("%s failed on %s (attempt %d), dead-lettered: %s: %r",
              name, where, attempt, reason, exc)
    await emit([dead_letter_record(record, group, exc, attempt)], "dead-letter")
    return DEAD


_REPLY_SPACE = REPLIES_TOPIC + "/"


async def _reply(emit: Emit, request: Mapping[str, str], result: Any) -> None:
    """Send a responder's result (or its exception, as an error) to the requester whose
    request had the headers ``request``."""
    reply_to = request.get(Headers.REPLY_TO)
    if reply_to is None:
        return
    if reply_to != REPLIES_TOPIC and not reply_to.startswith(_REPLY_SPACE):
        # app.request() writes this header, always naming the replies topic (a plain
        # MQTT 5 client's Response Topic may name one under "tidings.replies/", which
        # no tidings topic can be: names have no "/"); any other value was forged (by a
        # raw producer), and a reply there would let a requester make this responder
        # write into a topic of its choosing.
        log.warning("ignored a request whose reply-to %r is not the replies topic %r",
                    reply_to, REPLIES_TOPIC)
        return
    headers = {Headers.CORRELATION_ID: request.get(Headers.ID, "")}
    if isinstance(result, Exception):
        headers[Headers.REPLY_STATUS] = "error"
        result = {"error_type": type(result).__name__, "message": str(result)}
    try:
        value, content_type = encode(result)
    except Exception as exc:
        headers[Headers.REPLY_STATUS] = "error"
        value, content_type = encode({"error_type": type(exc).__name__, "message": str(exc)})
    headers[Headers.CONTENT_TYPE] = content_type
    await emit([OutRecord(reply_to, value, headers=headers)], "reply")
