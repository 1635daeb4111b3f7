"""Rules as values: what a rule file holds, and what Python code can declare directly.

A rule names the topics it watches, a condition (``when``), an optional time window
with aggregates and a condition over them (``having``), and the actions to take when
it fires. Conditions and action values are expressions over the event's fields (by
their wire names), ``message`` (id, topic, key, headers, timestamp, attempt),
``context`` (the engine's constants) and ``window`` (count and aggregates)::

    Rule("card-testing", topics=("payments",), when='status == "declined"',
         window=Window(by="userId", within="10m", having="window.count >= 3"),
         then=[Publish("fraud", key="str(userId)", fields={"userId": "userId"}),
               Tag("fraud-suspected")])
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ._errors import RuleError

__all__ = [
    "Action", "AggregateOp", "Call", "Enqueue", "Publish", "Route", "Rule", "Tag", "Window",
    "parse_duration",
]

AggregateOp = Literal["sum", "min", "max", "avg", "distinct"]
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: str | float) -> float:
    """Seconds from ``30``, ``"30s"``, ``"10m"``, ``"2h"``, ``"1d"`` or ``"250ms"``."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise RuleError(f"a duration is a positive number of seconds or like '10m', "
                        f"not {value!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class Window:
    """Events that passed ``when``, grouped by the value of ``by``, over the last
    ``within`` (seconds or ``"10m"``) of message time. ``aggregates`` name
    ``(op, expression)`` pairs (op: sum, min, max, avg, distinct); ``having`` is the
    condition over ``window.count``, ``window.<aggregate>`` and the event. ``reset``
    empties the group when the rule fires, so it fires once per burst."""

    by: str
    within: str | float
    having: str
    aggregates: Mapping[str, tuple[AggregateOp, str]] = field(default_factory=dict)
    reset: bool = False

    @property
    def seconds(self) -> float:
        """``within`` in seconds."""
        return parse_duration(self.within)


@dataclass(frozen=True)
class Publish:
    """Publish ``payload`` (literal values) updated with ``fields`` (name to expression)
    to ``topic``, keyed by the value of the ``key`` expression."""

    topic: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    fields: Mapping[str, str] = field(default_factory=dict)
    key: str | None = None


@dataclass(frozen=True)
class Enqueue:
    """Add a work item (``payload`` updated with ``fields``) to ``queue`` at ``priority``."""

    queue: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    fields: Mapping[str, str] = field(default_factory=dict)
    key: str | None = None
    priority: int = 0


@dataclass(frozen=True)
class Tag:
    """Tag the message: the handler reads the tags from the decision."""

    names: tuple[str, ...]

    def __init__(self, *names: str) -> None:
        object.__setattr__(self, "names", tuple(names))


@dataclass(frozen=True)
class Route:
    """Send the message as it is (body, key, user headers) to ``topic`` as well."""

    topic: str


@dataclass(frozen=True)
class Call:
    """Python only: ``await func(facts)`` with the facts the expressions saw."""

    func: Callable[[Mapping[str, Any]], Awaitable[None]]


Action = Publish | Enqueue | Tag | Route | Call


@dataclass(frozen=True)
class Rule:
    """A rule: on ``topics``, when ``when`` holds (and the window's ``having``), take
    the actions ``then``. ``source`` says where it was declared (``file:line``)."""

    name: str
    topics: Sequence[str]
    when: str = "true"
    then: Sequence[Action] = ()
    window: Window | None = None
    description: str = ""
    source: str = "python"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise RuleError(f"invalid rule name {self.name!r}: use 1-200 letters, digits, "
                            "'.', '_' or '-'").at("name")
        if isinstance(self.topics, str):
            object.__setattr__(self, "topics", (self.topics,))
        if not self.topics:
            raise RuleError(f"rule {self.name!r} watches no topic").at("topics")
        if not self.then:
            raise RuleError(f"rule {self.name!r} has no action").at("then")
