"""Encoding payloads for the wire and decoding them for a handler's declared type."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pydantic
import pydantic_core

from ._errors import DecodeError, SerializationError

__all__ = ["JSON", "OCTETS", "decoder_for", "encode"]

JSON = "application/json"
OCTETS = "application/octet-stream"

Decoder = Callable[[bytes], Any]


def encode(payload: object) -> tuple[bytes, str]:
    """Return ``(bytes, content type)``; raise SerializationError for what JSON cannot hold."""
    if type(payload) is not dict:  # a dict, the common case, skips the isinstance chain
        if isinstance(payload, bytes | bytearray | memoryview):
            return bytes(payload), OCTETS
        if isinstance(payload, pydantic.BaseModel):
            return payload.model_dump_json().encode(), JSON
    try:
        return pydantic_core.to_json(payload), JSON
    except pydantic_core.PydanticSerializationError as exc:
        raise SerializationError(
            f"cannot encode a {type(payload).__name__} payload as JSON: {exc}"
        ) from None


def decoder_for(annotation: Any) -> Decoder:
    """Build the decoder for a handler's payload annotation.

    ``bytes`` passes the raw value; a pydantic model validates JSON straight from bytes;
    ``dict``, ``str`` and any other type go through a pydantic TypeAdapter; no
    annotation gives the plain JSON value. Every failure is a :class:`DecodeError`.
    """
    if annotation is bytes:
        return bytes
    if annotation is inspect.Parameter.empty or annotation is Any:
        return _guard(pydantic_core.from_json)
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return _guard(annotation.model_validate_json)
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(annotation)
    return _guard(adapter.validate_json)


def _guard(decode: Decoder) -> Decoder:
    def guarded(raw: bytes) -> Any:
        try:
            return decode(raw)
        except (pydantic.ValidationError, ValueError) as exc:
            raise DecodeError(str(exc)) from exc

    return guarded
