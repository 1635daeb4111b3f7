"""Rules compiled for one topic's events."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rule_engine import DataType  # type: ignore[import-untyped]

from ._errors import RuleError
from ._expr import Expression, Scope
from ._rule import Action, Enqueue, Publish, Rule

__all__ = ["CompiledAction", "CompiledRule"]

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
