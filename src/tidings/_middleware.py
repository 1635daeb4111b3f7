"""The middleware seam: one shape that wraps every handler call and every append.

A middleware is a :class:`Middleware` that overrides :meth:`~Middleware.handle` (it
wraps each call of a subscriber, batch subscriber, worker, responder or cron job), or
:meth:`~Middleware.append` (it wraps each append to the bus: publish, publish_many,
publish_batch, the outbox relay, requests, replies, dead letters, re-drives, and the
recording of an outbox row), or both. Each receives the call and ``call_next``, and
returns what ``call_next`` returned, as Starlette's middleware wraps ``app``::

    class Timing(Middleware):
        async def handle(self, call: HandlerCall, call_next: CallNext) -> Any:
            started = time.perf_counter()
            try:
                return await call_next(call)
            finally:
                print(call.kind, call.topic, time.perf_counter() - started)

The chains are built once when the app starts, from the middlewares that override each
method, first registered outermost; a subscriber with no middleware calls its handler
directly and pays nothing. Semantics:

* an exception raised by a middleware around a handler counts as the handler raising
  (retried by the subscriber's policy, then dead-lettered);
* an exception raised around an append makes the publish raise;
* a middleware may change the records' headers (set ``record.headers`` to a new dict)
  before calling ``call_next``; it must not drop or reorder records.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._errors import ConfigurationError
from ._message import Message
from ._records import OutRecord, Position

__all__ = [
    "AppendCall",
    "AppendNext",
    "CallNext",
    "HandlerCall",
    "Middleware",
    "append_chain",
    "check_middleware",
    "handler_chain",
]


@dataclass(slots=True)
class HandlerCall:
    """One call of a handler, as middlewares see it.

    ``kind`` is ``"subscriber"``, ``"batch"``, ``"worker"``, ``"responder"`` or
    ``"cron"``. ``messages`` holds the delivered envelope (one, or a batch's);
    ``payload`` the decoded payload (a batch's list) once decoded. When the
    handler (or a middleware inside this one) raised, the runtime has decided what comes
    next before the exception reaches this middleware: ``retry_in`` is the backoff in
    seconds of a retry, or ``dead_lettered`` is True (and ``reason`` says why the
    policy gave up). A responder's failure is not
    raised (it becomes an error reply): ``error`` holds it.
    """

    app: str
    kind: str
    handler: str
    group: str | None
    system: str
    messages: Sequence[Message]
    attempt: int
    payload: Any = None
    retry_in: float | None = None
    dead_lettered: bool = False
    reason: str | None = None
    error: BaseException | None = None

    @property
    def message(self) -> Message:
        """The (first) delivered message."""
        return self.messages[0]

    @property
    def topic(self) -> str:
        """The topic the (first) message came from."""
        return self.messages[0].topic


@dataclass(slots=True)
class AppendCall:
    """One append to the bus, as middlewares see it.

    ``kind`` is ``"publish"`` (publish, publish_many, publish_batch, enqueue),
    ``"relay"`` (the outbox relay publishing recorded rows), ``"request"``,
    ``"reply"``, ``"dead-letter"``, ``"redrive"``, or ``"create"``: an outbox row being
    recorded in the caller's transaction (nothing is sent; a tracing middleware stamps
    its context into the headers so the relay's later send continues the trace).
    """

    app: str
    kind: str
    system: str
    records: list[OutRecord]
    extra: dict[str, Any] = field(default_factory=dict)


#: What a handler middleware calls to run the rest of the chain.
CallNext = Callable[[HandlerCall], Awaitable[Any]]
#: What an append middleware calls to run the rest of the chain.
AppendNext = Callable[[AppendCall], Awaitable[Sequence[Position]]]


class Middleware:
    """Base class of middlewares: override ``handle``, ``append`` or both."""

    async def handle(self, call: HandlerCall, call_next: CallNext) -> Any:
        """Wrap one handler call: return ``await call_next(call)`` (or raise)."""
        return await call_next(call)

    async def append(self, call: AppendCall, call_next: AppendNext) -> Sequence[Position]:
        """Wrap one append: return ``await call_next(call)`` (or raise)."""
        return await call_next(call)


_SHAPE = ("a tidings.Middleware subclass instance overriding "
          "'async def handle(self, call: HandlerCall, call_next) -> Any' and/or "
          "'async def append(self, call: AppendCall, call_next) -> Sequence[Position]'")


def check_middleware(middleware: object) -> Middleware:
    """``middleware`` if it has the middleware shape, else a ConfigurationError that
    says which shape is expected."""
    if isinstance(middleware, type) and issubclass(middleware, Middleware):
        raise ConfigurationError(f"{middleware.__name__} is a class: pass an instance "
                                 f"({middleware.__name__}()), {_SHAPE}")
    if not isinstance(middleware, Middleware):
        raise ConfigurationError(f"{middleware!r} is not a middleware: expected {_SHAPE}")
    for name in ("handle", "append"):
        method = getattr(middleware, name)
        if not inspect.iscoroutinefunction(method):
            raise ConfigurationError(f"{type(middleware).__name__}.{name} must be an "
                                     f"'async def': expected {_SHAPE}")
        try:
            inspect.signature(method).bind(None, None)
        except TypeError:
            raise ConfigurationError(
                f"{type(middleware).__name__}.{name}{inspect.signature(method)} does not "
                f"take (call, call_next): expected {_SHAPE}") from None
    return middleware


def handler_chain(middlewares: Sequence[Middleware], inner: CallNext) -> CallNext | None:
    """``inner`` wrapped by the middlewares that override ``handle`` (the first one
    outermost), or None when none does: the caller then keeps its direct path."""
    chain: CallNext | None = _chain(middlewares, "handle", inner)
    return chain


def append_chain(middlewares: Sequence[Middleware], inner: AppendNext) -> AppendNext | None:
    """``inner`` wrapped by the middlewares that override ``append``, or None."""
    chain: AppendNext | None = _chain(middlewares, "append", inner)
    return chain


def _chain(middlewares: Sequence[Middleware], name: str, inner: Any) -> Any:
    wrapping = [m for m in middlewares if getattr(type(m), name) is not getattr(Middleware, name)]
    if not wrapping:
        return None
    chain = inner
    for middleware in reversed(wrapping):
        chain = _link(getattr(middleware, name), chain)
    return chain


def _link(step: Callable[[Any, Any], Awaitable[Any]],
          rest: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
    def call(value: Any) -> Awaitable[Any]:
        return step(value, rest)

    return call
