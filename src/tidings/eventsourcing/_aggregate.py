"""Event-sourced aggregates: plain classes whose state is the fold of their events.

An aggregate's constructor takes only its id and sets the initial state; every change
goes through :meth:`Aggregate.record`, which applies the event and keeps it for the
store. Loading makes ``cls(id)`` and applies the stored events in order::

    class Order(Aggregate):
        topic = "orders"               # new events go to the bus through the outbox
        status: str                    # annotated state is what snapshots keep
        total: Decimal

        def __init__(self, id: str) -> None:
            super().__init__(id)
            self.status, self.total = "new", Decimal(0)

        @classmethod
        def place(cls, id: str, total: Decimal) -> Order:
            order = cls(id)
            order.record(OrderPlaced(total=total))
            return order

        def apply(self, event: BaseModel) -> None:
            match event:
                case OrderPlaced(total=total):
                    self.status, self.total = "placed", total
"""

from __future__ import annotations

import typing
from typing import Any, ClassVar

import pydantic

from .._errors import ConfigurationError

__all__ = ["Aggregate"]

_STATE_MODELS: dict[type[Aggregate], type[pydantic.BaseModel]] = {}


class Aggregate:
    """Base class of event-sourced aggregates (no metaclass; override :meth:`apply`).

    ``topic`` is the bus topic the store publishes new events to through the outbox
    (None: not published). ``version`` counts the events applied, recorded ones
    included; the store saves those after the version it loaded.
    """

    topic: ClassVar[str | None] = None
    id: str
    version: int

    def __init__(self, id: str) -> None:
        self.id = id
        self.version = 0
        self._pending: list[pydantic.BaseModel] = []

    @classmethod
    def stream_type(cls) -> str:
        """The name streams of this class are stored under (the class name)."""
        return cls.__name__

    def apply(self, event: pydantic.BaseModel) -> None:
        """Change the state for ``event``; pure, no I/O (it also runs on every load)."""
        raise NotImplementedError(f"{type(self).__qualname__} must override apply()")

    def record(self, event: pydantic.BaseModel) -> None:
        """Apply a new event and keep it until the store saves it."""
        self.apply(event)
        self.version += 1
        self._pending.append(event)

    @property
    def pending_events(self) -> list[pydantic.BaseModel]:
        """Events recorded since the aggregate was loaded or last saved."""
        return list(self._pending)

    def _mark_saved(self) -> None:
        self._pending.clear()

    def snapshot_state(self) -> dict[str, Any]:
        """The state a snapshot keeps, as JSON-ready data. The default keeps every
        attribute annotated on the class (``id``, ``version`` and ``_private`` ones
        aside) and refuses unannotated public attributes, which it could not restore."""
        model = _state_model(type(self))
        extra = sorted(n for n in vars(self)
                       if not n.startswith("_") and n not in model.model_fields
                       and n not in ("id", "version"))
        if extra:
            raise ConfigurationError(
                f"{type(self).__qualname__} has unannotated attributes {extra}: annotate "
                "them on the class so snapshots keep them, or override snapshot_state()")
        state = model.model_validate({n: getattr(self, n) for n in model.model_fields})
        data: dict[str, Any] = state.model_dump(mode="json")
        return data

    def restore_state(self, state: dict[str, Any]) -> None:
        """Set the state from :meth:`snapshot_state`'s output (validated against the
        annotations, so a snapshot of an older shape raises and is ignored)."""
        model = _state_model(type(self)).model_validate(state)
        for name in type(model).model_fields:
            setattr(self, name, getattr(model, name))


def _state_model(cls: type[Aggregate]) -> type[pydantic.BaseModel]:
    """A pydantic model of ``cls``'s annotated state, built once per class."""
    model = _STATE_MODELS.get(cls)
    if model is not None:
        return model
    try:
        hints = typing.get_type_hints(cls)
    except Exception as exc:
        raise ConfigurationError(f"cannot resolve the annotations of {cls!r}: {exc}") from exc
    fields: dict[str, Any] = {
        name: (hint, ...) for name, hint in hints.items()
        if not name.startswith("_") and name not in ("id", "version")
        and typing.get_origin(hint) is not ClassVar and hint is not ClassVar
    }
    try:
        model = pydantic.create_model(f"{cls.__name__}State", **fields)
    except (pydantic.PydanticSchemaGenerationError, TypeError) as exc:
        raise ConfigurationError(
            f"cannot snapshot {cls.__qualname__}: {exc}; override snapshot_state() and "
            "restore_state()") from exc
    _STATE_MODELS[cls] = model
    return model
