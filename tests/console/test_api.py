"""The console's JSON API over a real SQLite bus with real apps: topics, groups and lag,
dead letters (re-drive, purge, malformed), conversations, sagas and refused actions."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from tidings import App, Message, RetryPolicy
from tidings._message import Headers
from tidings._records import OutRecord
from tidings.asyncapi import merge, read_documents
from tidings.console import open_view
from tidings.console._web import create_app


class Order(BaseModel):
    type: str = "ORDER_CREATED"
    order_id: str
    card_number: str = "4111111111111111"


Check = Callable[[httpx.AsyncClient], Awaitable[None]]


def run(broker: str, check: Check, *, allow_actions: bool = False) -> None:
    async def go() -> None:
        async with open_view(broker, allow_actions=allow_actions) as view:
            async def documents() -> dict[str, Any]:
                return merge((await read_documents(view.transport)).values())

            app = create_app(view, documents=documents, tick=0.05)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://console",
                                         headers={"X-Tidings-Console": "1"}) as c:
                await check(c)

    asyncio.run(go())


async def shop(broker: str, orders: list[str], *, poison: bool = False) -> None:
    """Orders flow through a stock service and a payments service that publishes; with
    ``poison`` a message the stock service cannot handle is dead-lettered."""
    app = App("stock", broker=broker, retry=RetryPolicy(max_attempts=1))
    payments = App("payments", broker=broker)
    done: asyncio.Queue[str] = asyncio.Queue()

    @app.subscriber("orders")
    async def reserve(order: Order) -> None:
        await app.publish("stock", {"type": "STOCK_RESERVED", "order_id": order.order_id},
                          key=order.order_id)

    @payments.subscriber("stock")
    async def charge(event: dict[str, Any], message: Message) -> None:
        await payments.publish("payments", {"type": "PAYMENT_SUCCEEDED",
                                            "order_id": event["order_id"]},
                               key=event["order_id"])
        await done.put(event["order_id"])

    payments.publishes("payments", dict)
    async with app, payments:
        for order_id in orders:
            await app.publish("orders", Order(order_id=order_id), key=order_id)
        if poison:
            await app.publish("orders", {"not": "an order"}, key="bad")
        for _ in orders:
            await asyncio.wait_for(done.get(), 20)
        await _settled(app)


async def _settled(app: App) -> None:
    for _ in range(200):
        lags = await app.lag()
        if all(p.lag == 0 for p in lags):
            return
        await asyncio.sleep(0.05)


@pytest.fixture
def broker(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/bus.db"


def test_topics_and_groups_with_lag(broker: str) -> None:
    asyncio.run(shop(broker, ["o-1", "o-2"]))

    async def check(c: httpx.AsyncClient) -> None:
        topics = {t["name"]: t for t in (await c.get("/api/topics")).json()}
        assert {"orders", "stock", "payments", "tidings.apps"} <= set(topics)
        assert topics["orders"]["messages"] == 2 and topics["orders"]["partitions"] == 4
        groups = {g["name"]: g for g in (await c.get("/api/groups")).json()}
        assert groups["stock"]["lag"] == 0 and groups["payments"]["lag"] == 0
        assert {p["topic"] for p in groups["stock"]["partitions"]} == {"orders"}
        assert groups["stock"]["members"] == []  # the apps stopped

    run(broker, check)


def test_conversation_by_order_id_message_id_and_unknown(broker: str) -> None:
    asyncio.run(shop(broker, ["o-1", "o-2"]))

    async def check(c: httpx.AsyncClient) -> None:
        data = (await c.get("/api/conversations/o-1")).json()
        messages = data["messages"]
        assert [(m["topic"], m["type"]) for m in messages] == [
            ("orders", "ORDER_CREATED"), ("stock", "STOCK_RESERVED"),
            ("payments", "PAYMENT_SUCCEEDED")]
        first, second, third = messages
        assert second["causation_id"] == first["id"] and third["causation_id"] == second["id"]
        assert {m["correlation_id"] for m in messages} == {first["id"]}
        # the app that published each (the stock app also takes the orders here)
        assert [m["published_by"] for m in messages] == ["stock", "stock", "payments"]
        # handled, and when: the time its handling published the next message
        assert first["handled_by"] == [{"group": "stock", "outcome": "handled",
                                        "at": second["published_at"]}]
        assert second["handled_by"] == [{"group": "payments", "outcome": "handled",
                                         "at": third["published_at"]}]
        assert third["handled_by"] == []  # nobody reads payments
        assert first["payload"]["card_number"] == "**** 1111"  # never a card on a page
        assert all(m["key"] == "o-1" for m in messages)
        by_id = (await c.get(f"/api/conversations/{second['id']}")).json()["messages"]
        assert [m["id"] for m in by_id] == [m["id"] for m in messages]
        by_app = (await c.get("/api/conversations/stock")).json()  # a key in tidings.apps
        assert by_app["messages"] == []
        unknown = await c.get("/api/conversations/nothing-here")
        assert unknown.status_code == 200
        assert unknown.json() == {"id": "nothing-here", "messages": [],
                                  "note": "no messages for nothing-here"}

    run(broker, check)


def test_pending_outcome_before_a_group_handles(broker: str) -> None:
    async def publish() -> None:
        async with App("stock", broker=broker) as app:
            await app.transport.set_offsets("late", {})
            await app.publish("orders", Order(order_id="o-9"), key="o-9")
            from tidings._records import TopicPartition
            await app.transport.set_offsets("late", {TopicPartition("orders", p): 0
                                                     for p in range(4)})

    asyncio.run(publish())

    async def check(c: httpx.AsyncClient) -> None:
        messages = (await c.get("/api/conversations/o-9")).json()["messages"]
        assert messages[0]["handled_by"] == [{"group": "late", "outcome": "pending"}]

    run(broker, check)


def test_dead_letters_refused_without_actions_then_redriven(broker: str) -> None:
    asyncio.run(shop(broker, ["o-1"], poison=True))

    async def wait_dead(c: httpx.AsyncClient) -> list[dict[str, Any]]:
        for _ in range(100):
            response = await c.get("/api/dead-letters/orders")
            if response.status_code == 200 and response.json():
                return list(response.json())
            await asyncio.sleep(0.05)
        raise AssertionError("no dead letter")

    async def read_only(c: httpx.AsyncClient) -> None:
        entries = await wait_dead(c)
        assert len(entries) == 1 and entries[0]["key"] == "bad"
        assert entries[0]["group"] == "stock" and not entries[0]["malformed"]
        assert entries[0]["error_type"].endswith("DecodeError")
        refused = await c.post(f"/api/dead-letters/orders/redrive?position="
                               f"{entries[0]['position']}")
        assert refused.status_code == 403
        assert "--allow-actions" in refused.json()["error"]
        assert (await c.post("/api/dead-letters/orders/purge")).status_code == 403
        assert len((await c.get("/api/dead-letters/orders")).json()) == 1

    run(broker, read_only)

    async def acting(c: httpx.AsyncClient) -> None:
        entries = await wait_dead(c)
        done = await c.post(f"/api/dead-letters/orders/redrive?position="
                            f"{entries[0]['position']}")
        assert done.json() == {"redriven": 1}
        assert (await c.get("/api/dead-letters/orders")).json() == []
        timeline = (await c.get("/api/conversations/bad")).json()["messages"]
        assert [m["redriven_for"] for m in timeline] == [None, "stock"]
        assert timeline[0]["handled_by"] == [{"group": "stock", "outcome": "retried"}]
        assert timeline[1]["handled_by"] == [{"group": "stock", "outcome": "pending"}]
        assert (await c.get("/api/dead-letters/nope")).status_code == 404
        bad = await c.post("/api/dead-letters/orders/purge?position=x")
        assert bad.status_code == 400 and "PARTITION:OFFSET" in bad.json()["error"]

    run(broker, acting, allow_actions=True)


def test_malformed_dead_letter_is_shown_and_purgeable(broker: str) -> None:
    async def write() -> None:
        async with App("writer", broker=broker) as app:
            await app.transport.append([OutRecord(
                "orders.dlq", b"\xff not json", key="k",
                headers={Headers.DLQ_TOPIC: "orders", Headers.DLQ_PARTITION: "zero",
                         Headers.DLQ_ATTEMPTS: "many"})])

    asyncio.run(write())

    async def check(c: httpx.AsyncClient) -> None:
        entries = (await c.get("/api/dead-letters/orders")).json()
        assert len(entries) == 1 and entries[0]["malformed"]
        assert entries[0]["error_message"] == "malformed dead-letter headers"
        position = entries[0]["position"]
        redrive = await c.post(f"/api/dead-letters/orders/redrive?position={position}")
        assert redrive.status_code == 400 and "purge" in redrive.json()["error"]
        purged = await c.post(f"/api/dead-letters/orders/purge?position={position}")
        assert purged.json() == {"purged": 1}
        assert (await c.get("/api/dead-letters/orders")).json() == []

    run(broker, check, allow_actions=True)


def test_page_and_merged_asyncapi(broker: str) -> None:
    asyncio.run(shop(broker, ["o-1"]))

    async def check(c: httpx.AsyncClient) -> None:
        page = await c.get("/")
        assert page.status_code == 200 and "EventSource" in page.text
        doc = (await c.get("/api/asyncapi")).json()
        assert {"orders", "stock", "payments"} <= set(doc["channels"])
        assert doc["operations"]["payments.subscriber.stock"]["action"] == "receive"
        assert doc["info"]["description"] == "apps: payments, stock"

    run(broker, check)


def test_a_console_that_only_looks_opens_the_bus_read_only(broker: str) -> None:
    """Without --allow-actions the embedded bus is opened with SQLite's mode=ro: pages,
    lookups (indexing into the console's private database) write nothing to the bus."""
    asyncio.run(shop(broker, ["o-1"], poison=True))
    path = Path(broker[len("sqlite:///"):])

    def files() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in path.parent.iterdir()
                if p.name.startswith(path.name)}

    before = files()

    async def check(c: httpx.AsyncClient) -> None:
        for url in ("/api/topics", "/api/groups", "/api/conversations/o-1",
                    "/api/dead-letters/orders"):
            assert (await c.get(url)).status_code == 200, url
        assert len((await c.get("/api/dead-letters/orders")).json()) == 1
        refused = await c.post("/api/dead-letters/orders/purge")
        assert refused.status_code == 403

    async def go() -> None:
        async with open_view(broker) as view:
            assert view.transport.options.read_only  # type: ignore[attr-defined]
            app = create_app(view, documents=lambda: asyncio.sleep(0, {}), tick=0.05)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://console",
                                         headers={"X-Tidings-Console": "1"}) as c:
                await check(c)

    asyncio.run(go())
    after = files()
    assert after[path.name] == before[path.name]
    # (a WAL reader may make the shared-memory index and an empty log beside the bus)
    assert after.get(f"{path.name}-wal", b"") == before.get(f"{path.name}-wal", b"")
