"""Expressions of rules, in the ``rule-engine`` language (a small, typed, safe language:
comparisons, ``in``, ``and``/``or``/``not``, arithmetic, ``=~`` regexes, attribute and
item access). Compiled once, against the event's field types, when a rule is loaded.

Regexes (``=~``, ``=~~``) run on RE2, in time linear in the text: a pattern that would
backtrack catastrophically in Python's ``re`` cannot stall the event loop on event data.
RE2 has no backreferences nor lookarounds; a rule that uses them is refused when loaded.
An expression nested too deeply for the parser (hundreds of terms) is a RuleError too."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import re2  # type: ignore[import-untyped]
import rule_engine  # type: ignore[import-untyped]
from rule_engine import DataType
from rule_engine.ast import FuzzyComparisonExpression  # type: ignore[import-untyped]

from ._errors import RuleError
from ._types import RESERVED, mapping_object

__all__ = ["Expression", "Scope"]


class Scope:
    """The names an expression may use, with their types; ``fields`` None means the
    event's fields are not known (no schema), so any other name is accepted."""

    def __init__(self, fields: Mapping[str, Any] | None, context: Mapping[str, Any],
                 window: Mapping[str, Any] | None = None) -> None:
        self.fields = fields
        self.symbols: dict[str, Any] = {
            "message": mapping_object("message", {
                "id": DataType.STRING, "topic": DataType.STRING,
                "key": DataType.NULLABLE(DataType.STRING), "timestamp": DataType.FLOAT,
                "attempt": DataType.FLOAT, "headers": DataType.MAPPING(DataType.STRING,
                                                                        DataType.STRING)}),
            "context": mapping_object("context", context),
            "event": mapping_object("event", fields) if fields is not None
            else DataType.MAPPING(DataType.STRING),
        }
        if window is not None:
            self.symbols["window"] = mapping_object("window", window)
        for name, data_type in (fields or {}).items():
            if name not in RESERVED:
                self.symbols[name] = data_type

    def with_window(self, window: Mapping[str, Any]) -> Scope:
        """This scope plus the ``window`` aggregates."""
        return Scope(self.fields, _context_types(self.symbols["context"]), window)

    def resolve_type(self, name: str) -> Any:
        """The type of ``name`` (for rule-engine's type checker)."""
        found = self.symbols.get(name)
        if found is not None:
            return found
        if self.fields is None and name not in RESERVED:
            return DataType.UNDEFINED
        raise rule_engine.SymbolResolutionError(name, suggestion=_closest(name, self.symbols))


def _context_types(context_type: Any) -> dict[str, Any]:
    return dict(context_type.attributes)


def _closest(name: str, known: Mapping[str, Any]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(name, list(known), n=1)
    return matches[0] if matches else None


class _Re2Context(rule_engine.Context):  # type: ignore[misc]
    """A rule-engine context whose regexes are compiled with RE2 (see the module doc)."""


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # the error is ours to report, not RE2's to print
_compile_with_re = FuzzyComparisonExpression._compile_regex


def _compile_regex(self: Any, regex: str) -> Any:
    # rule-engine compiles with `re` and has no hook for another engine: this method is
    # replaced once, and only expressions of tidings' own context use RE2.
    if not isinstance(self.context, _Re2Context):
        return _compile_with_re(self, regex)
    try:
        return re2.compile(regex, options=_RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        reason = reason.decode(errors="replace") if isinstance(reason, bytes) else reason
        raise rule_engine.errors.RegexSyntaxError(
            f"invalid regular expression (RE2: {reason})", error=exc, value=regex) from None


FuzzyComparisonExpression._compile_regex = _compile_regex

_TOO_DEEP = "the expression is nested too deeply (split it into smaller rules)"


class Expression:
    """One compiled expression; :meth:`evaluate` runs it on a dict of facts."""

    def __init__(self, text: str, scope: Scope) -> None:
        if not isinstance(text, str) or not text.strip():
            raise RuleError("an expression is a non-empty string")
        self.text = text
        context = _Re2Context(type_resolver=scope.resolve_type, default_timezone="utc")
        try:
            self._rule = rule_engine.Rule(text, context=context)
        except RecursionError:
            raise RuleError(f"{_TOO_DEEP}: {_shorten(text)}") from None
        except rule_engine.EngineError as exc:
            error = RuleError(describe(exc, text))
            token = getattr(exc, "token", None)
            if token is not None:
                error.line_offset = max(int(getattr(token, "lineno", 1) or 1) - 1, 0)
            elif isinstance(exc, rule_engine.RuleSyntaxError):  # at the end of the text
                error.line_offset = len(text.rstrip().splitlines()) - 1
            raise error from None

    def evaluate(self, facts: Mapping[str, Any]) -> Any:
        """The expression's value on ``facts``; raises RuleError if it cannot be computed
        (a field missing from an event without schema, a type mismatch at run time)."""
        try:
            return self._rule.evaluate(facts)
        except RecursionError:
            raise RuleError(f"{_TOO_DEEP}: {_shorten(self.text)}") from None
        except rule_engine.EngineError as exc:
            raise RuleError(describe(exc, self.text)) from None

    def matches(self, facts: Mapping[str, Any]) -> bool:
        """Whether the expression is true (truthy) on ``facts``."""
        return bool(self.evaluate(facts))

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"


def _shorten(text: str) -> str:
    return repr(text if len(text) <= 80 else f"{text[:77]}...")


def describe(exc: rule_engine.EngineError, text: str) -> str:
    """One line saying what is wrong with ``text``."""
    if isinstance(exc, rule_engine.SymbolResolutionError):
        hint = f" (did you mean {exc.suggestion!r}?)" if exc.suggestion else ""
        return f"unknown field {exc.symbol_name!r} in {text!r}{hint}"
    if isinstance(exc, rule_engine.errors.ObjectAttributeError):
        hint = f" (did you mean {exc.suggestion!r}?)" if exc.suggestion else ""
        return f"{exc.message} in {text!r}{hint}"
    if isinstance(exc, rule_engine.RuleSyntaxError):
        token = getattr(exc, "token", None)
        where = f" at {token.value!r}" if token is not None else " at the end"
        return f"syntax error{where} in {text!r}"
    return f"{exc.message} in {text!r}"
