"""The public API of the rules engine is pinned and documented."""

from __future__ import annotations

import tidings
import tidings.rules as rules


def test_exported_members() -> None:
    assert sorted(rules.__all__) == sorted([
        "RULE_HEADER", "RULE_MESSAGE_HEADER", "Action", "Call", "Decision", "Enqueue",
        "Fired", "Publish", "Route", "Rule", "RuleEngine", "RuleError", "RuleFileError",
        "Tag", "Window", "parse_duration"])
    for name in rules.__all__:
        obj = getattr(rules, name)
        if isinstance(obj, type) or callable(obj):
            assert getattr(obj, "__doc__", None), f"{name} has no docstring"
    assert issubclass(rules.RuleFileError, tidings.TidingsError)
    assert issubclass(rules.RuleFileError, tidings.ConfigurationError)


def test_durations() -> None:
    assert [rules.parse_duration(v) for v in (30, "30s", "10m", "2h", "1d", "250ms")] == [
        30.0, 30.0, 600.0, 7200.0, 86400.0, 0.25]
