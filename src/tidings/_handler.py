"""Turning a user's function into something the consumer runtime can call."""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._codec import Decoder, decoder_for
from ._errors import ConfigurationError
from ._message import Message

__all__ = ["Handler", "inspect_handler"]


@dataclass(frozen=True, slots=True)
class Handler:
    """A handler with its payload decoder and the way to call it."""

    func: Callable[..., Any]
    decode: Decoder
    takes_payload: bool
    message_param: str | None
    is_async: bool

    async def call(self, payload: Any, message: Message) -> Any:
        """Invoke the function; a plain (sync) function runs in a worker thread."""
        args = (payload,) if self.takes_payload else ()
        kwargs = {self.message_param: message} if self.message_param else {}
        if self.is_async:
            return await self.func(*args, **kwargs)
        return await asyncio.to_thread(self.func, *args, **kwargs)


def inspect_handler(func: Callable[..., Any]) -> Handler:
    """Read a handler's signature: its first parameter is the payload, decoded for its
    annotation (a pydantic model, ``dict``, ``bytes``, ...); a parameter annotated
    :class:`Message` receives the envelope. Anything else is a definition-time error."""
    if not callable(func):
        raise ConfigurationError(f"{func!r} is not callable")
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:
        raise ConfigurationError(f"cannot resolve the annotations of {func!r}: {exc}") from exc
    params = list(inspect.signature(func).parameters.values())
    message_param = next((p.name for p in params if hints.get(p.name) is Message), None)
    rest = [p for p in params if p.name != message_param]
    if len(rest) > 1:
        names = ", ".join(p.name for p in rest[1:])
        raise ConfigurationError(
            f"handler {func.__qualname__} has parameters tidings cannot fill: {names} "
            "(expected one payload parameter and optionally one annotated Message)"
        )
    annotation = hints.get(rest[0].name, inspect.Parameter.empty) if rest else bytes
    return Handler(
        func=func,
        decode=decoder_for(annotation),
        takes_payload=bool(rest),
        message_param=message_param,
        is_async=inspect.iscoroutinefunction(func),
    )
