"""What the engine decided about one message: which rules fired, what they did."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Decision", "Fired"]


@dataclass(frozen=True, slots=True)
class Fired:
    """One rule that fired: where it was declared, what it did, its window's facts."""

    rule: str
    source: str
    actions: tuple[str, ...]
    window: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of evaluating the rules of ``topic`` on one message.

    ``tags`` gathers the Tag actions of the rules that fired, ``routes`` the topics the
    message was routed to; ``errors`` lists rules that could not be evaluated on it
    (say, a field missing from an event without a schema). True if a rule fired.
    """

    message_id: str
    topic: str
    partition: int
    offset: int
    evaluated: int
    fired: tuple[Fired, ...] = ()
    tags: frozenset[str] = frozenset()
    routes: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.fired)

    @property
    def rules(self) -> tuple[str, ...]:
        """The names of the rules that fired, in evaluation order."""
        return tuple(f.rule for f in self.fired)

    def to_dict(self) -> dict[str, Any]:
        """The decision as JSON-ready data (for an audit log)."""
        data = asdict(self)
        data["tags"] = sorted(self.tags)
        for fired in data["fired"]:
            if fired["window"] is not None:
                fired["window"] = {k: _plain(v) for k, v in fired["window"].items()}
        return data


def _plain(value: Any) -> Any:
    from decimal import Decimal

    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value
