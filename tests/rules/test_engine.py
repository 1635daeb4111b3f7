"""Evaluating rules: conditions, time windows, actions on a real bus, tracing."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from tidings import App, Message, testing
from tidings.rules import (
    RULE_HEADER,
    RULE_MESSAGE_HEADER,
    Call,
    Decision,
    Enqueue,
    Publish,
    Route,
    Rule,
    RuleEngine,
    RuleError,
    Tag,
    Window,
)
from tidings.sqlalchemy import Outbox, create_tables, outbox_table

from .helpers import Payment, envelope, payment

DECLINES = Rule(
    "card-testing", topics=("payments",), when='status == "declined"',
    window=Window(by="userId", within="10m", having="window.count >= 3",
                  aggregates={"total": ("sum", "amount")}),
    then=[Tag("fraud-suspected")])


def engine(*rules: Rule, **kwargs: Any) -> RuleEngine:
    return RuleEngine(rules=rules, schemas={"payments": Payment}, reload_interval=None, **kwargs)


@pytest.mark.parametrize(("when", "fires"), [
    ('status == "declined" and amount >= 10', True),
    ('status in ["declined", "failed"] and not (amount > 100)', True),
    ('card.country in context.blocked or amount > 1000', True),
    ('"vip" in tags', False),
    ('note == null and message.headers["channel"] == "web"', True),
    ('message.key == "u-1" and event.userId == 1 and orderId =~ "o-[0-9]+"', True),
    ("amount > 10 or card.last4 != '4242'", False),
])
def test_conditions_over_fields_context_and_envelope(when: str, fires: bool) -> None:
    rules = engine(Rule("r", topics=("payments",), when=when, then=[Tag("hit")]),
                   context={"blocked": ["FR", "XX"]})
    message = envelope(payment(), key="u-1", headers={"channel": "web"})
    decision = asyncio.run(rules.evaluate(payment(), message))
    assert bool(decision) is fires and ("hit" in decision.tags) is fires


def test_three_declines_for_a_user_within_ten_minutes() -> None:
    rules = engine(DECLINES)

    def at(minute: float, user: int = 1, status: str = "declined") -> Decision:
        event = payment(user=user, status=status)
        return asyncio.run(rules.evaluate(event, envelope(event, at=1e9 + minute * 60)))

    assert not at(0) and not at(4) and not at(5, status="approved") and not at(5, user=2)
    third = at(9)
    assert third.rules == ("card-testing",)
    assert third.fired[0].window == {"count": 3, "key": 1, "total": 30}
    assert at(12)  # 4, 9, 12: still three within ten minutes
    assert not at(30)  # alone again
    assert not at(31, user=2)  # user 2: 5 and 31 are far apart


def test_a_redelivered_message_is_counted_once_and_reset_starts_over() -> None:
    window = Window(by="userId", within=600, having="window.count >= 2", reset=True)
    rules = engine(Rule("twice", topics=("payments",), window=window, then=[Tag("t")]))
    event = payment()
    first = envelope(event, message_id="m1", at=1e9)
    assert not asyncio.run(rules.evaluate(event, first))
    assert not asyncio.run(rules.evaluate(event, first))  # redelivered: still one
    assert asyncio.run(rules.evaluate(event, envelope(event, message_id="m2", at=1e9 + 1)))
    assert not asyncio.run(rules.evaluate(event, envelope(event, message_id="m3", at=1e9 + 2)))


def test_a_rule_that_cannot_be_evaluated_is_reported_and_others_still_run() -> None:
    rules = RuleEngine(rules=[
        Rule("needs-score", topics=("untyped",), when="score > 5", then=[Tag("a")]),
        Rule("always", topics=("untyped",), then=[Tag("b")]),
    ], reload_interval=None)
    decision = asyncio.run(rules.evaluate({"amount": 1}, envelope({"amount": 1},
                                                                  topic="untyped")))
    assert decision.rules == ("always",)
    assert decision.errors and "needs-score: unknown field 'score'" in decision.errors[0]


def test_python_rules_are_checked_when_added() -> None:
    with pytest.raises(RuleError, match="unknown field 'amout'"):
        engine(Rule("bad", topics=("payments",), when="amout > 1", then=[Tag("x")]))
    with pytest.raises(RuleError, match="no action"):
        Rule("empty", topics=("payments",))
    rules = engine(DECLINES)
    with pytest.raises(RuleError, match="two rules are named"):
        rules.add(DECLINES)


def test_actions_publish_enqueue_route_and_are_traceable(
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[Any] = []

    async def remember(facts: Any) -> None:
        calls.append(facts["orderId"])

    rule = Rule("big", topics=("payments",), when="amount > 100", then=[
        Publish("fraud", payload={"type": "FRAUD_SUSPECTED"},
                fields={"userId": "userId", "double": "amount * 2"}, key="userId"),
        Enqueue("reviews", fields={"orderId": "orderId"}, priority=7),
        Route("payments.review"), Tag("hold"), Call(remember)])

    async def main() -> tuple[list[tuple[str, Any, Message]], list[Decision]]:
        app = App("fraud-checks", broker=testing.memory_url())
        seen: list[Decision] = []
        rules = engine(rule, app=app, on_decision=seen.append)
        got: list[tuple[str, Any, Message]] = []
        done = asyncio.Event()

        def keep(name: str) -> Any:
            async def handler(body: Any, message: Message) -> None:
                got.append((name, body, message))
                if len(got) == 3:
                    done.set()
            handler.__annotations__ = {"body": Any, "message": Message, "return": None}
            return handler

        rules.subscribe(app, "payments")
        app.subscriber("fraud")(keep("fraud"))
        app.worker("reviews")(keep("reviews"))
        app.subscriber("payments.review")(keep("review"))
        async with app:
            await app.publish("payments", payment(user=5, amount=150).model_dump(by_alias=True),
                              key="u-5", headers={"channel": "web"})
            await asyncio.wait_for(done.wait(), 10)
        return got, seen

    with caplog.at_level(logging.INFO, logger="tidings.rules"):
        got, seen = asyncio.run(main())
    by_name = {name: (body, message) for name, body, message in got}
    [decision] = seen
    assert by_name["fraud"][0] == {"type": "FRAUD_SUSPECTED", "userId": 5, "double": 300}
    assert by_name["fraud"][1].key == "5"
    assert by_name["reviews"][0] == {"orderId": "o-5"}
    assert by_name["reviews"][1].headers["tidings-priority"] == "7"
    assert json.loads(by_name["review"][1].body)["amount"] == 150  # the original message
    assert by_name["review"][1].headers["channel"] == "web" and by_name["review"][1].key == "u-5"
    for _, message in by_name.values():  # every effect names the rule and the message
        assert message.headers[RULE_HEADER] == "big"
        assert message.headers[RULE_MESSAGE_HEADER] == decision.message_id
        assert message.causation_id == decision.message_id
    assert calls == ["o-5"]
    assert decision.tags == {"hold"} and decision.routes == ("payments.review",)
    assert decision.fired[0].actions == ("publish fraud", "enqueue reviews",
                                         "route payments.review", "tag hold",
                                         f"call {remember.__qualname__}")
    assert json.loads(json.dumps(decision.to_dict()))["fired"][0]["rule"] == "big"
    assert "rule big (python) fired on payments[" in caplog.text
    assert decision.message_id in caplog.text


def test_with_a_session_actions_go_through_the_outbox(tmp_path: Path) -> None:
    rule = Rule("big", topics=("payments",), when="amount > 100",
                then=[Publish("fraud", fields={"orderId": "orderId"})])

    async def main() -> None:
        db = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/s.db")
        await create_tables(db)
        rules = engine(rule, outbox=Outbox(db))
        event = payment(amount=500)
        async with db.begin() as conn:
            decision = await rules.evaluate(event, envelope(event), session=conn)
        async with db.connect() as conn:
            row = (await conn.execute(sa.select(outbox_table))).one()
        assert decision and row.topic == "fraud"
        assert json.loads(row.value) == {"orderId": "o-1"}
        assert json.loads(row.headers)[RULE_HEADER] == "big"
        await db.dispose()

    asyncio.run(main())
