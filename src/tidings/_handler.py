"""Turning a user's function into something the consumer runtime can call."""

from __future__ import annotations

import asyncio
import collections.abc
import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ._codec import Decoder, decoder_for
from ._errors import ConfigurationError
from ._message import Message

__all__ = ["Handler", "inspect_handler"]


Invoke = Callable[[Any, Any], Awaitable[Any]]  # (payload or payloads, Message or list)


@dataclass(frozen=True, slots=True)
class Handler:
    """A handler with its payload decoder and the way to call it."""

    func: Callable[..., Any]
    decode: Decoder
    takes_payload: bool
    message_param: str | None
    is_async: bool
    #: The payload's annotation (what the AsyncAPI document describes).
    payload_type: Any = field(default=bytes, compare=False)
    invoke: Invoke = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "invoke", _invoker(self))

    def call(self, payload: Any, message: Message) -> Awaitable[Any]:
        """Invoke the function (a plain, sync one in a worker thread); await the result.
        ``payload`` is ignored by a handler without a payload parameter."""
        return self.invoke(payload, message)


def _invoker(handler: Handler) -> Invoke:
    """The call for this signature, decided once: a call per message must not build
    argument tuples and keyword dicts it does not need."""
    func, name = handler.func, handler.message_param
    if handler.is_async and name is None:
        if handler.takes_payload:
            return lambda payload, _message: func(payload)
        return lambda _payload, _message: func()

    async def invoke(payload: Any, message: Message) -> Any:
        args = (payload,) if handler.takes_payload else ()
        kwargs = {name: message} if name else {}
        if handler.is_async:
            return await func(*args, **kwargs)
        return await asyncio.to_thread(func, *args, **kwargs)

    return invoke


def inspect_handler(func: Callable[..., Any], *, batch: bool = False) -> Handler:
    """Read a handler's signature: its first parameter is the payload, decoded for its
    annotation (a pydantic model, ``dict``, ``bytes``, ...); a parameter annotated
    :class:`Message` receives the envelope. Anything else is a definition-time error.

    A ``batch`` handler takes a ``list`` of payloads (``list[Event]``; each decoded for
    the element type) and optionally a ``list[Message]``; ``decode`` then decodes one
    element."""
    if not callable(func):
        raise ConfigurationError(f"{func!r} is not callable")
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:
        raise ConfigurationError(f"cannot resolve the annotations of {func!r}: {exc}") from exc
    envelope: Any = list[Message] if batch else Message
    params = list(inspect.signature(func).parameters.values())
    message_param = next((p.name for p in params if _is(hints.get(p.name), envelope)), None)
    rest = [p for p in params if p.name != message_param]
    expected = "a list of payloads and optionally a list[Message]" if batch else \
        "one payload parameter and optionally one annotated Message"
    if len(rest) > 1:
        names = ", ".join(p.name for p in rest[1:])
        raise ConfigurationError(
            f"handler {func.__qualname__} has parameters tidings cannot fill: {names} "
            f"(expected {expected})"
        )
    annotation = hints.get(rest[0].name, inspect.Parameter.empty) if rest else bytes
    if batch and rest:
        annotation = _element_of(func, annotation)
    return Handler(
        func=func,
        decode=decoder_for(annotation),
        takes_payload=bool(rest),
        message_param=message_param,
        is_async=inspect.iscoroutinefunction(func),
        payload_type=annotation,
    )


def _is(hint: Any, envelope: Any) -> bool:
    """Whether ``hint`` is ``envelope``: ``Message``, or for a batch ``list[Message]``
    (also ``Sequence[Message]``; never a bare ``list``)."""
    if hint is envelope:
        return True
    args = typing.get_args(envelope)
    return bool(args) and typing.get_origin(hint) in _LISTS and typing.get_args(hint) == args


_LISTS = (list, collections.abc.Sequence)


def _element_of(func: Callable[..., Any], annotation: Any) -> Any:
    """``T`` of a batch handler's ``list[T]`` (or ``Sequence[T]``) payload annotation."""
    if typing.get_origin(annotation) in _LISTS and len(typing.get_args(annotation)) == 1:
        return typing.get_args(annotation)[0]
    if annotation in (list, inspect.Parameter.empty):
        return inspect.Parameter.empty  # plain JSON values
    raise ConfigurationError(
        f"batch handler {func.__qualname__} must take a list of payloads "
        f"(e.g. list[Event]), not {annotation!r}"
    )
