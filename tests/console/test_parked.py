"""The console shows parked keys (behind a dead letter with ``dead_letter="park-key"``)
with counts, keeps parked copies out of conversations, and its page has the table."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from tidings import App, RetryPolicy
from tidings._parklog import parked_keys
from tidings.console import open_view
from tidings.console._web import create_app


async def park(broker: str) -> None:
    app = App("billing", broker=broker)

    @app.subscriber("payments", retry=RetryPolicy.never(), dead_letter="park-key",
                    partitions=1)
    async def charge(payload: dict[str, Any]) -> None:
        if payload["n"] == 0:
            raise RuntimeError("declined")

    async with app:
        for n in range(3):
            await app.publish("payments", {"n": n}, key="order-1")
        for _ in range(400):
            if sum(k.count for k in await parked_keys(app.transport)) == 3:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the key was not parked")


def test_parked_keys_are_listed_and_kept_out_of_conversations(tmp_path: Path) -> None:
    broker = f"sqlite:///{tmp_path}/bus.db"
    asyncio.run(park(broker))

    async def check() -> None:
        async with open_view(broker) as view:
            app = create_app(view, documents=_no_documents, tick=0.05)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://console") as c:
                parked = (await c.get("/api/parked")).json()
                assert [(k["group"], k["topic"], k["key"], k["parked"], k["dead"])
                        for k in parked] == [("billing", "payments", "order-1", 3, True)]
                assert "re-drive or purge" in parked[0]["waits_for"]
                timeline = (await c.get("/api/conversations/order-1")).json()["messages"]
                assert {m["topic"] for m in timeline} == {"payments"}
                assert len(timeline) == 3
                page = (await c.get("/")).text
                assert 'id="parked"' in page and "/api/parked" in page

    asyncio.run(check())


async def _no_documents() -> dict[str, Any]:
    return {}
