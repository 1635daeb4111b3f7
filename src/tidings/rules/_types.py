"""The expression language's types of an event's fields, from its pydantic model.

Rule conditions are compiled against these types, so a rule that names a field the
event does not have, or compares a number with a string, is refused when it is loaded.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import types
import typing
from collections import abc
from collections.abc import Mapping
from typing import Any

import pydantic
from rule_engine import DataType  # type: ignore[import-untyped]

__all__ = ["RESERVED", "facts_of", "fields_of", "mapping_object", "type_of", "value_type"]

#: Top-level names the engine owns; an event field of that name is still ``event.<name>``.
RESERVED = frozenset({"event", "message", "context", "window"})
_SCALARS: dict[type, Any] = {
    bool: DataType.BOOLEAN, int: DataType.FLOAT, float: DataType.FLOAT,
    decimal.Decimal: DataType.FLOAT, str: DataType.STRING, bytes: DataType.BYTES,
    datetime.datetime: DataType.DATETIME, datetime.timedelta: DataType.TIMEDELTA,
}


def _get(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)


def mapping_object(name: str, attributes: Mapping[str, Any]) -> Any:
    """An OBJECT type whose attributes are read from a dict (checked when compiled)."""
    return DataType.OBJECT(name, attributes=dict(attributes), accessor=_get)


def fields_of(model: type[pydantic.BaseModel], depth: int = 0) -> dict[str, Any]:
    """The types of ``model``'s fields by their wire names (aliases)."""
    result: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        result[info.alias or name] = type_of(info.annotation, depth)
    return result


def type_of(hint: Any, depth: int = 0) -> Any:
    """The expression type of a Python type hint; UNDEFINED (unchecked) if it has none."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        inner = type_of(args[0], depth) if len(args) == 1 else DataType.UNDEFINED
        return DataType.NULLABLE(inner) if len(args) < len(typing.get_args(hint)) else inner
    if origin is typing.Literal:
        kinds = {type(a) for a in typing.get_args(hint)}
        return _SCALARS.get(kinds.pop(), DataType.UNDEFINED) if len(kinds) == 1 else \
            DataType.UNDEFINED
    if origin in (list, tuple, abc.Sequence, frozenset, set, abc.Set):
        same = len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis)
        item = type_of(args[0], depth) if same else DataType.UNDEFINED
        return DataType.SET(item) if origin in (set, frozenset, abc.Set) else \
            DataType.ARRAY(item)
    if origin in (dict, abc.Mapping):
        return DataType.MAPPING(type_of(args[0], depth), type_of(args[1], depth)) \
            if len(args) == 2 else DataType.MAPPING(DataType.UNDEFINED)
    if isinstance(hint, type):
        return _class_type(hint, depth)
    return DataType.UNDEFINED


def _class_type(hint: type, depth: int) -> Any:
    if issubclass(hint, pydantic.BaseModel):
        if depth >= 5:
            return DataType.UNDEFINED
        return mapping_object(hint.__name__, fields_of(hint, depth + 1))
    if issubclass(hint, enum.Enum):
        kinds = {type(m.value) for m in hint}
        return _SCALARS.get(kinds.pop(), DataType.UNDEFINED) if len(kinds) == 1 else \
            DataType.UNDEFINED
    for kind, data_type in _SCALARS.items():
        if issubclass(hint, kind):
            return data_type
    return DataType.UNDEFINED


def facts_of(value: Any) -> Any:
    """An event as plain data the expressions can read: models and dataclass-like values
    to dicts (by wire names), enums to their values, tuples and frozensets to lists."""
    if isinstance(value, pydantic.BaseModel):
        return facts_of(value.model_dump(by_alias=True))
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): facts_of(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [facts_of(v) for v in value]
    if isinstance(value, set | frozenset):
        return {facts_of(v) for v in value}
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        return datetime.datetime.combine(value, datetime.time(), datetime.UTC)
    return value


def value_type(value: Any) -> Any:
    """The expression type of a value (for the engine's ``context``)."""
    try:
        return DataType.from_value(facts_of(value))
    except (TypeError, ValueError):
        return DataType.UNDEFINED
