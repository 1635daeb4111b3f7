"""Event types by name, the upcasters between their schema versions, and ``Recorded``.

Events are pydantic models. They are stored under a type name (the class name unless
given) and a schema version; today's class has the newest version. An event stored in
an older shape is read by running its data (a dict) through the upcasters from its
version to today's, then validating it into the class::

    events = EventRegistry()
    events.add(OrderPlaced, version=2)

    @events.upcaster("OrderPlaced", from_version=1)
    def add_currency(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "currency": "EUR"}
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pydantic

from .._errors import ConfigurationError
from ._errors import UnknownEventTypeError, UpcastError

__all__ = ["EventRegistry", "EventType", "Recorded", "Upcaster"]

E = TypeVar("E", bound=pydantic.BaseModel)
M = TypeVar("M", bound=type[pydantic.BaseModel])
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class EventType:
    """A registered event class: the name it is stored under and its schema version."""

    name: str
    cls: type[pydantic.BaseModel]
    version: int


@dataclass(frozen=True, slots=True)
class Recorded(Generic[E]):
    """A stored event with where and when it was recorded.

    ``version`` is its place in its stream (1, 2, ...); ``position`` its place in the
    store's global order, which projections follow (it can have gaps, never reorders).
    """

    event: E
    stream_id: str
    stream_type: str
    version: int
    position: int
    event_id: str
    event_type: str
    recorded_at: float
    metadata: Mapping[str, str] = field(default_factory=dict)


class EventRegistry:
    """The event classes a store can read and write, and the upcasters of their old shapes."""

    def __init__(self, *classes: type[pydantic.BaseModel]) -> None:
        self._by_name: dict[str, EventType] = {}
        self._by_class: dict[type[pydantic.BaseModel], EventType] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        for cls in classes:
            self.add(cls)

    def add(self, cls: M, *, name: str | None = None, version: int = 1,
            aliases: Iterable[str] = ()) -> M:
        """Register ``cls`` under ``name`` (default: its class name) at schema ``version``;
        ``aliases`` are names it was stored under before a rename. Returns ``cls``."""
        if not (isinstance(cls, type) and issubclass(cls, pydantic.BaseModel)):
            raise ConfigurationError(f"an event type is a pydantic model class, not {cls!r}")
        if not isinstance(version, int) or version < 1:
            raise ConfigurationError(f"an event schema version is an int >= 1, not {version!r}")
        entry = EventType(name or cls.__name__, cls, version)
        for key in (entry.name, *aliases):
            known = self._by_name.get(key)
            if known is not None and known.cls is not cls:
                raise ConfigurationError(
                    f"event type name {key!r} is taken by {known.cls.__qualname__}")
            self._by_name[key] = entry
        self._by_class[cls] = entry
        return cls

    def upcaster(self, name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register a function turning the data of event ``name`` at schema version
        ``from_version`` into its shape at ``from_version + 1``."""
        def register(func: Upcaster) -> Upcaster:
            if (name, from_version) in self._upcasters:
                raise ConfigurationError(
                    f"two upcasters for {name!r} from version {from_version}")
            self._upcasters[(name, from_version)] = func
            return func

        return register

    def __contains__(self, cls: object) -> bool:
        return cls in self._by_class

    def type_of(self, event: pydantic.BaseModel) -> EventType:
        """The registration of ``event``'s class."""
        entry = self._by_class.get(type(event))
        if entry is None:
            raise UnknownEventTypeError(
                f"{type(event).__qualname__} is not a registered event type: "
                "add it with EventRegistry.add()")
        return entry

    def get(self, name: str) -> EventType | None:
        """The registration under ``name`` (or one of its aliases), if any."""
        return self._by_name.get(name)

    def encode(self, event: pydantic.BaseModel) -> tuple[EventType, str]:
        """The registration of ``event`` and its data as JSON text (field aliases)."""
        return self.type_of(event), event.model_dump_json(by_alias=True)

    def decode(self, name: str, schema_version: int, data: str | bytes, *,
               stream_id: str, version: int) -> pydantic.BaseModel:
        """Read stored data into today's model, upcasting older shapes. Raises
        :class:`UpcastError` naming the stream and version when that cannot be done."""
        entry = self._by_name.get(name)

        def fail(reason: str) -> UpcastError:
            return UpcastError(stream_id, version, name, schema_version, reason)

        if entry is None:
            raise fail("no event class is registered under this name")
        try:
            if schema_version == entry.version:
                return entry.cls.model_validate_json(data)
            if schema_version > entry.version:
                raise fail(f"it is newer than the registered class (v{entry.version})")
            return entry.cls.model_validate(self._upcast(entry, schema_version, data, fail))
        except pydantic.ValidationError as exc:
            raise fail(f"{entry.cls.__qualname__} rejects it: {_first_error(exc)}") from exc

    def _upcast(self, entry: EventType, schema_version: int, data: str | bytes,
                fail: Callable[[str], UpcastError]) -> dict[str, Any]:
        value: Any = json.loads(data)
        for step in range(schema_version, entry.version):
            upcaster = self._upcasters.get((entry.name, step))
            if upcaster is None:
                raise fail(f"no upcaster from v{step} to v{step + 1}")
            try:
                value = upcaster(dict(value))
            except Exception as exc:
                raise fail(f"the upcaster from v{step} raised {exc!r}") from exc
        if not isinstance(value, dict):
            raise fail(f"upcasting gave a {type(value).__name__}, not a dict")
        return value


def _first_error(exc: pydantic.ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"]) or "(root)"
    extra = f" ({exc.error_count()} errors)" if exc.error_count() > 1 else ""
    return f"{where}: {error['msg']}{extra}"
