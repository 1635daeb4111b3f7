"""Carrying out a fired rule's actions: through the app, or through the outbox in the
caller's transaction when the handler passes its session."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .._errors import ConfigurationError
from .._message import Headers, Message
from .._workqueue import queue_topics
from ._compiled import CompiledAction, CompiledRule
from ._rule import Call, Enqueue, Publish, Route, Tag

if TYPE_CHECKING:
    from .._app import App

__all__ = ["RULE_HEADER", "RULE_MESSAGE_HEADER", "Effects"]

#: Messages a rule publishes name the rule and the message it fired on.
RULE_HEADER = "tidings-rule"
RULE_MESSAGE_HEADER = "tidings-rule-message"


class Effects:
    """Publishes, enqueues and routes for the engine (``outbox``: a tidings.sqlalchemy
    Outbox, used when the handler passes its transaction)."""

    def __init__(self, app: App | None, outbox: Any = None) -> None:
        self.app = app
        self.outbox = outbox

    async def run(self, rule: CompiledRule, action: CompiledAction, facts: Mapping[str, Any],
                  message: Message, session: Any) -> str:
        """Carry ``action`` out; return what it did, for the decision."""
        act = action.action
        if isinstance(act, Tag):
            return "tag " + ", ".join(act.names)
        if isinstance(act, Call):
            await act.func(facts)
            return f"call {getattr(act.func, '__qualname__', repr(act.func))}"
        headers = {RULE_HEADER: rule.rule.name, RULE_MESSAGE_HEADER: message.id}
        if isinstance(act, Route):
            user = {k: v for k, v in message.headers.items() if not k.startswith("tidings-")}
            await self._send(act.topic, message.body, message.key, headers, session, user)
            return f"route {act.topic}"
        assert isinstance(act, Publish | Enqueue)
        payload = {**act.payload, **{n: plain(e.evaluate(facts))
                                      for n, e in action.fields.items()}}
        key = None if action.key is None else _key(action.key.evaluate(facts))
        if isinstance(act, Publish):
            await self._send(act.topic, payload, key, headers, session)
            return f"publish {act.topic}"
        headers[Headers.PRIORITY] = str(act.priority)
        await self._send(queue_topics(act.queue)[act.priority], payload, key, headers, session)
        return f"enqueue {act.queue}"

    async def _send(self, topic: str, payload: Any, key: str | None,
                    reserved: dict[str, str], session: Any,
                    headers: Mapping[str, str] | None = None) -> None:
        # The rule's own headers are the runtime's (tidings-*): sent as reserved ones.
        if session is not None and self.outbox is not None:
            await self.outbox._record(session, topic, payload, key=key, headers=headers,
                                      reserved=reserved)
        elif self.app is not None:
            await self.app._publish(topic, payload, key=key, headers=headers, reserved=reserved)
        else:
            raise ConfigurationError("a rule publishes, but the RuleEngine has no app "
                                     "(RuleEngine(app, ...)) nor outbox with a session")


def plain(value: Any) -> Any:
    """An expression's value as JSON-friendly Python (numbers are Decimals there)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def _key(value: Any) -> str | None:
    value = plain(value)
    return None if value is None else str(value)
