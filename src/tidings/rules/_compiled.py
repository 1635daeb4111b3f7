"""Rules compiled for one topic's events, and the time windows they count in."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rule_engine import DataType  # type: ignore[import-untyped]

from ._errors import RuleError
from ._expr import Expression, Scope
from ._rule import Action, Enqueue, Publish, Rule

__all__ = ["CompiledAction", "CompiledRule", "Windows"]

_OPS = ("sum", "min", "max", "avg", "distinct")


@dataclass(frozen=True)
class CompiledAction:
    """An action with its key and field expressions compiled."""

    action: Action
    key: Expression | None
    fields: Mapping[str, Expression]


def _compile(text: str, scope: Scope, *path: str | int) -> Expression:
    try:
        return Expression(text, scope)
    except RuleError as exc:
        raise exc.at(*path) from None


class CompiledRule:
    """A rule compiled against the types of one topic's events (``scope``)."""

    def __init__(self, rule: Rule, scope: Scope) -> None:
        self.rule = rule
        self.when = _compile(rule.when, scope, "when")
        self.window = rule.window
        self.by: Expression | None = None
        self.having: Expression | None = None
        self.aggregates: dict[str, tuple[str, Expression]] = {}
        self.within = 0.0
        if rule.window is not None:
            scope = self._compile_window(rule, scope)
        self.actions = [self._compile_action(n, a, scope) for n, a in enumerate(rule.then)]

    def _compile_window(self, rule: Rule, scope: Scope) -> Scope:
        window = rule.window
        assert window is not None
        try:
            self.within = window.seconds
        except RuleError as exc:
            raise exc.at("window", "within") from None
        self.by = _compile(window.by, scope, "window", "by")
        for name, (op, text) in window.aggregates.items():
            if op not in _OPS or name in ("count", "key"):
                raise RuleError(f"aggregate {name!r}: use one of {', '.join(_OPS)} and a "
                                "name other than count or key").at("window", "aggregates", name)
            self.aggregates[name] = (op, _compile(text, scope, "window", "aggregates", name))
        types = {"count": DataType.FLOAT, "key": DataType.UNDEFINED,
                 **dict.fromkeys(self.aggregates, DataType.FLOAT)}
        with_window = scope.with_window(types)
        self.having = _compile(window.having, with_window, "window", "having")
        return with_window

    def _compile_action(self, n: int, action: Action, scope: Scope) -> CompiledAction:
        if not isinstance(action, Publish | Enqueue):
            return CompiledAction(action, None, {})
        kind = "publish" if isinstance(action, Publish) else "enqueue"
        key = None if action.key is None else _compile(action.key, scope, "then", n, kind, "key")
        fields = {name: _compile(text, scope, "then", n, kind, "fields", name)
                  for name, text in action.fields.items()}
        return CompiledAction(action, key, fields)


@dataclass
class _Entry:
    at: float
    message_id: str
    values: dict[str, Any]


class Windows:
    """The events each windowed rule has seen, per group key, in this process.

    Times are message times, so a replay counts as the original run did. A message
    delivered twice (at-least-once) is counted once.
    """

    def __init__(self) -> None:
        self._groups: dict[tuple[str, Any], deque[_Entry]] = {}
        self._adds = 0

    def add(self, rule: CompiledRule, key: Any, at: float, message_id: str,
            values: dict[str, Any]) -> dict[str, Any]:
        """Count an event in its group; return the group's ``window`` facts."""
        group_key = (rule.rule.name, _hashable(key))
        entries = self._groups.setdefault(group_key, deque())
        if all(entry.message_id != message_id for entry in entries):
            entries.append(_Entry(at, message_id, values))
        while entries and entries[0].at <= at - rule.within:
            entries.popleft()
        self._adds += 1
        if self._adds % 1000 == 0:
            self._forget_idle(at)
        return _stats(rule, key, entries)

    def clear(self, rule: CompiledRule, key: Any) -> None:
        """Empty a group (a rule with ``reset`` fired)."""
        self._groups.pop((rule.rule.name, _hashable(key)), None)

    def _forget_idle(self, now: float) -> None:
        horizon = max(now, time.time()) - 86400.0
        for group_key in [k for k, v in self._groups.items() if not v or v[-1].at < horizon]:
            del self._groups[group_key]


def _hashable(key: Any) -> Any:
    try:
        hash(key)
    except TypeError:
        return repr(key)
    return key


def _stats(rule: CompiledRule, key: Any, entries: deque[_Entry]) -> dict[str, Any]:
    stats: dict[str, Any] = {"count": len(entries), "key": key}
    for name, (op, _) in rule.aggregates.items():
        values = [e.values[name] for e in entries if e.values.get(name) is not None]
        if op == "distinct":
            stats[name] = len({repr(v) for v in values})
        elif not values:
            stats[name] = 0
        elif op == "sum":
            stats[name] = sum(values)
        elif op == "avg":
            stats[name] = sum(values) / len(values)
        else:
            stats[name] = min(values) if op == "min" else max(values)
    return stats
