"""docs/rules.md as one program: the guide's rule file and Python snippet, verbatim,
with the event models, an outbox and the calls that make the rules fire.
``python examples/guides/rules.py`` (in an empty folder: it writes rules/ and rules.db)"""

import asyncio
from pathlib import Path

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import create_async_engine

from tidings import App
from tidings.sqlalchemy import Outbox, create_tables
from tidings.testing import TestBus

#: The guide's rule file, as the guide shows it.
FRAUD_YAML = """\
# rules/fraud.yaml
rules:
  - name: card-testing
    description: three declined payments for one user in ten minutes
    topic: payments                      # or topics: [a, b]
    when: status == "declined"
    window:
      by: userId                         # group key (an expression)
      within: 10m                        # 30, 30s, 10m, 2h, 1d, 250ms
      aggregates:                        # optional; window.count is always there
        total: {sum: amount}             # sum, min, max, avg, distinct
        cards: {distinct: card.last4}
      having: window.count >= 3 and window.total > 20
      reset: true                        # start counting again after firing
    then:
      - publish:
          topic: fraud
          key: userId
          payload: {type: FRAUD_SUSPECTED}            # literal values
          fields: {userId: userId, declines: window.count, orderId: orderId}   # expressions
      - enqueue: {queue: reviews, priority: 7, fields: {orderId: orderId}}
      - tag: [fraud-suspected, hold]     # the handler reads decision.tags
      - route: payments.review           # the message itself, to another topic too

  - name: blocked-country
    topic: payments
    when: card.country in context.blocked_countries and amount > 100
    then: [{tag: hold}]
  - name: experiment
    enabled: false                       # validated, not active
    topic: payments
    then: [{tag: x}]
"""

Path("rules").mkdir(exist_ok=True)
Path("rules/fraud.yaml").write_text(FRAUD_YAML)


class Card(BaseModel):
    last4: str
    country: str


class Payment(BaseModel):
    orderId: str
    userId: int
    status: str
    amount: float
    card: Card


class OrderPlaced(BaseModel):
    id: str
    total: float


app = App("payments")
outbox = Outbox(create_async_engine("sqlite+aiosqlite:///rules.db"))
audit: list[object] = []
held: list[str] = []

from tidings import Message
from tidings.rules import Publish, Rule, RuleEngine, Tag

engine = RuleEngine(
    app,
    files=["rules/"],                       # files or folders of *.yaml, *.yml, *.json
    rules=[Rule("big-order", topics=("orders",), when="total > 1000",
                then=[Tag("review"), Publish("orders.review", fields={"orderId": "id"})])],
    schemas={"payments": Payment, "orders": OrderPlaced},   # type-checks the rules
    context={"blocked_countries": ["XX", "YY"]},
    outbox=outbox,                          # optional: actions in the handler's transaction
    on_decision=audit.append,               # optional: every Decision
).attach(app)                               # watch the files in the background

@app.subscriber("payments", group="fraud")
async def on_payment(payment: Payment, message: Message) -> None:
    decision = await engine.evaluate(payment, message)
    if "hold" in decision.tags:
        held.append(payment.orderId)

engine.subscribe(app, "orders", group="order-rules")   # a subscriber that only evaluates


async def main() -> None:
    await create_tables(outbox.engine)
    card = {"last4": "4242", "country": "XX"}
    async with TestBus(app) as bus:
        for n in range(3):  # three declines in ten minutes: card testing
            await app.publish("payments", {"orderId": f"o-{n}", "userId": 7,
                                           "status": "declined", "amount": 9, "card": card},
                              key="user-7")
        await app.publish("payments", {"orderId": "o-9", "userId": 8, "status": "ok",
                                       "amount": 150, "card": card}, key="user-8")
        await app.publish("orders", {"id": "o-10", "total": 1500})
        await bus.idle()
        assert sorted(held) == ["o-2", "o-9"], held  # card testing; a blocked country
        bus.assert_published("fraud", {"type": "FRAUD_SUSPECTED", "userId": 7, "declines": 3})
        bus.assert_published("orders.review", {"orderId": "o-10"})
        assert any("review" in d.tags for d in audit)  # type: ignore[attr-defined]
    await outbox.engine.dispose()
    print("rules guide: all ran")


if __name__ == "__main__":
    asyncio.run(main())
