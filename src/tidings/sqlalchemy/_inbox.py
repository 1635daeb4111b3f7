"""The idempotent inbox: a handler's writes and "message X processed by consumer Y"
commit in one transaction, so a redelivered message has no second effect."""

from __future__ import annotations

import inspect
import logging
import time
import typing
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar, overload

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from .._errors import ConfigurationError
from .._message import Message
from ._group import GroupCommit
from ._schema import inbox_table
from ._sql import Executor, in_transaction, insert_if_absent

__all__ = ["Inbox"]

log = logging.getLogger("tidings.inbox")

T = TypeVar("T")
R = TypeVar("R")

_MESSAGE_PARAM = "tidings_message"


class Inbox:
    """Exactly-once effects for one consumer (a handler) on the service's database.

    ``consumer`` names the handler; a message id is processed at most once per
    consumer. ``sessions`` makes the sessions handlers get (default: an
    ``async_sessionmaker`` on ``engine`` with ``expire_on_commit=False``).
    """

    def __init__(self, engine: AsyncEngine, consumer: str, *,
                 sessions: async_sessionmaker[AsyncSession] | None = None) -> None:
        if not isinstance(consumer, str) or not consumer or len(consumer) > 200:
            raise ConfigurationError(
                f"an inbox consumer is a name of 1-200 characters, not {consumer!r}")
        self.engine = engine
        self.consumer = consumer
        self._sessions = sessions or async_sessionmaker(engine, expire_on_commit=False)

    async def process(self, message: Message | str,
                      work: Callable[[AsyncSession], Awaitable[T]]) -> T | None:
        """Run ``work(session)`` in a new transaction that also records ``message`` (or a
        message id) as processed; commit both, or neither if ``work`` raises. A message
        processed before is skipped: ``work`` is not called and None is returned."""
        async with self._sessions() as session, session.begin():
            if not await self.claim(session, message):
                return None
            return await work(session)

    async def handle(self, message: Message | str,
                     work: Callable[[AsyncConnection], Awaitable[T]]) -> T | None:
        """Like :meth:`process`, as a unit of work of the engine's
        :class:`GroupCommit`: ``work(conn)`` and the inbox row commit together with the
        units of other callers, in one transaction (``work`` waits on nothing but its
        statements). Returns None, without calling ``work``, for a message seen before."""

        async def once(conn: AsyncConnection) -> T | None:
            if not await self.claim(conn, message):
                return None
            return await work(conn)

        return await GroupCommit.of(self.engine).run(once)

    async def claim(self, transaction: Executor, message: Message | str) -> bool:
        """Record ``message`` (or a message id) as processed in ``transaction`` (an
        ``AsyncSession`` or ``AsyncConnection`` inside a transaction on this inbox's
        database, holding the handler's writes); False if it was processed before, and
        then the caller does nothing. The lighter form of :meth:`process` for callers
        that already hold a transaction (no ORM session is made)."""
        executor = in_transaction(transaction, self.engine, "inbox.claim")
        message_id = message if isinstance(message, str) else message.id
        row = {"consumer": self.consumer, "message_id": message_id,
               "processed_at": time.time()}
        if await insert_if_absent(executor, inbox_table, row):
            return True
        log.info("inbox %s: message %s was processed before; skipped",
                 self.consumer, message_id)
        return False

    @overload
    def idempotent(
        self, func: Callable[[T, AsyncSession], Awaitable[R]]
    ) -> Callable[[T, Message], Awaitable[R | None]]: ...
    @overload
    def idempotent(
        self, func: Callable[[T, AsyncSession, Message], Awaitable[R]]
    ) -> Callable[[T, Message], Awaitable[R | None]]: ...

    def idempotent(self, func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """Turn ``async def f(payload, session[, message])`` into a tidings handler that
        runs ``f`` through :meth:`process`; put ``@app.subscriber(...)`` above it::

            @app.subscriber("orders")
            @inbox.idempotent
            async def on_order(order: OrderPlaced, session: AsyncSession) -> None: ...
        """
        payload, hint, takes_message = _inspect(func)

        async def handler(payload: Any, tidings_message: Message) -> Any:
            extra = (tidings_message,) if takes_message else ()
            return await self.process(tidings_message,
                                      lambda session: func(payload, session, *extra))

        message = inspect.Parameter(_MESSAGE_PARAM, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                    annotation=Message)
        handler.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [payload.replace(annotation=hint), message])
        handler.__annotations__ = {payload.name: hint, _MESSAGE_PARAM: Message, "return": Any}
        handler.__name__ = getattr(func, "__name__", "handler")
        handler.__qualname__ = getattr(func, "__qualname__", handler.__name__)
        handler.__doc__ = func.__doc__
        return handler

    async def seen(self, message_id: str) -> bool:
        """Whether this consumer processed ``message_id``."""
        table = inbox_table
        async with self.engine.connect() as conn:
            found = await conn.scalar(sa.select(table.c.message_id).where(
                table.c.consumer == self.consumer, table.c.message_id == message_id))
        return found is not None

    async def prune(self, older_than: float | timedelta) -> int:
        """Forget messages processed more than ``older_than`` (seconds) ago; return how
        many. Keep them longer than any redelivery can take (retention, retries)."""
        seconds = older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
        table = inbox_table
        statement = sa.delete(table).where(table.c.consumer == self.consumer,
                                           table.c.processed_at < time.time() - seconds)

        async def delete(conn: AsyncConnection) -> int:
            return int((await conn.execute(statement)).rowcount)

        return await GroupCommit.of(self.engine).run(delete)


def _inspect(func: Callable[..., Any]) -> tuple[inspect.Parameter, Any, bool]:
    """The payload parameter, its type hint, and whether ``func`` takes the Message."""
    if not inspect.iscoroutinefunction(func):
        raise ConfigurationError(f"inbox.idempotent needs an async function, not {func!r}")
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:
        raise ConfigurationError(f"cannot resolve the annotations of {func!r}: {exc}") from exc
    params = list(inspect.signature(func).parameters.values())
    if len(params) not in (2, 3) or (len(params) == 3 and hints.get(params[2].name) is not Message):
        raise ConfigurationError(
            f"{func.__qualname__} must take (payload, session) or (payload, session, "
            "message: Message) to be used with inbox.idempotent"
        )
    return params[0], hints.get(params[0].name, inspect.Parameter.empty), len(params) == 3
