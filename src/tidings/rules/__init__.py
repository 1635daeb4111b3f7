"""A rules engine for tidings handlers: rules as data (YAML, JSON) or Python, evaluated
on messages inside subscribers, hot-reloaded, and traced.

Conditions use the ``rule-engine`` expression language (``pip install 'tidings[rules]'``):
comparisons, ``in``, ``and``/``or``/``not``, regexes, over the event's fields, the
``message`` envelope, the engine's ``context`` and a rule's time ``window``::

    engine = RuleEngine(app, files=["rules/"], schemas={"payments": Payment})

    @app.subscriber("payments")
    async def on_payment(payment: Payment, message: Message) -> None:
        decision = await engine.evaluate(payment, message)
        if "fraud-suspected" in decision.tags:
            ...
"""

from __future__ import annotations

try:
    import rule_engine  # type: ignore[import-untyped]  # noqa: F401
    import yaml  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    from .._errors import MissingDependencyError

    raise MissingDependencyError("tidings.rules", "rules") from exc

from ._decision import Decision, Fired
from ._effects import RULE_HEADER, RULE_MESSAGE_HEADER
from ._engine import RuleEngine
from ._errors import RuleError, RuleFileError
from ._rule import Action, Call, Enqueue, Publish, Route, Rule, Tag, Window, parse_duration

__all__ = [
    "RULE_HEADER",
    "RULE_MESSAGE_HEADER",
    "Action",
    "Call",
    "Decision",
    "Enqueue",
    "Fired",
    "Publish",
    "Route",
    "Rule",
    "RuleEngine",
    "RuleError",
    "RuleFileError",
    "Tag",
    "Window",
    "parse_duration",
]
