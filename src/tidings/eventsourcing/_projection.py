"""Projections: read models built from the stored events, in order, exactly once.

A projection is a name and handlers per event class. A runner (on SQLAlchemy:
:class:`tidings.eventsourcing.sqlalchemy.Projections`) feeds it the store's events in
global order and commits each batch of read-model writes together with the
projection's position, so a crash never counts an event twice nor skips one::

    totals = Projection("order-totals")

    @totals.on(OrderPlaced)
    async def placed(event: Recorded[OrderPlaced], session: AsyncSession) -> None:
        await session.execute(update(order_totals).values(n=order_totals.c.n + 1))

    @totals.on_reset
    async def clear(session: AsyncSession) -> None:
        await session.execute(delete(order_totals))
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pydantic

from .._errors import ConfigurationError
from ._events import Recorded

__all__ = ["Projection", "ProjectionHandler", "ResetHandler"]

E = TypeVar("E", bound=pydantic.BaseModel)
#: ``async def handler(recorded, session)``; the session is the runner's transaction.
ProjectionHandler = Callable[[Recorded[E], Any], Awaitable[None]]
ResetHandler = Callable[[Any], Awaitable[None]]
H = TypeVar("H", bound=Callable[..., Awaitable[None]])

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


class Projection:
    """A named read model: handlers per event class, and how to clear it for a rebuild.

    Events of classes it has no handler for only move its position on. ``stream_types``
    narrows it to streams of some aggregate classes (by :meth:`Aggregate.stream_type`).
    """

    def __init__(self, name: str, *, stream_types: tuple[str, ...] = ()) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigurationError(
                f"invalid projection name {name!r}: use 1-200 letters, digits, '.', '_' or '-'")
        self.name = name
        self.stream_types = frozenset(stream_types)
        self._handlers: dict[type[pydantic.BaseModel], ProjectionHandler[Any]] = {}
        self._resets: list[ResetHandler] = []
        self._before_commit: list[ResetHandler] = []

    def on(self, *classes: type[E]) -> Callable[[H], H]:
        """Register ``async def f(recorded: Recorded[E], session)`` for events of
        ``classes``; returns ``f`` unchanged."""
        def register(func: H) -> H:
            for cls in classes:
                if cls in self._handlers:
                    raise ConfigurationError(
                        f"projection {self.name!r} has two handlers for {cls.__qualname__}")
                self._handlers[cls] = func
            return func

        return register

    def on_reset(self, func: H) -> H:
        """Register ``async def f(session)`` that clears the read model before a rebuild
        (it runs in the transaction that moves the position back to the start)."""
        self._resets.append(func)
        return func

    def before_commit(self, func: H) -> H:
        """Register ``async def f(session)`` that runs at the end of every batch, in its
        transaction, before the position moves. Handlers can gather in
        ``session.info`` (new for every batch, gone if it rolls back) and write once
        here: one statement per batch instead of one per event."""
        self._before_commit.append(func)
        return func

    async def end_batch(self, session: Any) -> None:
        """Run the before-commit handlers (the runner calls this)."""
        for func in self._before_commit:
            await func(session)

    def handler_for(self, recorded: Recorded[Any]) -> ProjectionHandler[Any] | None:
        """The handler of this stored event, if the projection handles it."""
        if self.stream_types and recorded.stream_type not in self.stream_types:
            return None
        return self._handlers.get(type(recorded.event))

    @property
    def event_classes(self) -> frozenset[type[pydantic.BaseModel]]:
        """The event classes this projection has handlers for."""
        return frozenset(self._handlers)

    def handles(self, event_class: type[pydantic.BaseModel]) -> bool:
        """Whether an event of ``event_class`` has a handler here."""
        return event_class in self._handlers

    async def reset(self, session: Any) -> None:
        """Run the reset handlers (a rebuild calls this)."""
        for reset in self._resets:
            await reset(session)
