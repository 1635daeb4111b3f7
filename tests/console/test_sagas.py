"""Sagas in the console: a real saga database (SQLite through SqlSagaStore), listed by
status with their history; a parked one retried only with --allow-actions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import create_async_engine

from tidings import App
from tidings.console import open_view
from tidings.console._web import create_app
from tidings.saga import Direction, SagaRecord, SagaStatus, StepEvent
from tidings.sqlalchemy import SqlSagaStore, create_tables


async def _parked_saga(db: str) -> None:
    engine = create_async_engine(db)
    try:
        await create_tables(engine)
        store = SqlSagaStore(engine)
        await store.create(SagaRecord("s-1", "checkout", SagaStatus.PARKED, Direction.FORWARD,
                                      "{}", step=1, error="payment gateway down"),
                           [StepEvent("s-1", "charge", "action", "failed", 3, "gateway down")])
        await store.create(SagaRecord("s-2", "checkout", SagaStatus.COMPLETED,
                                      Direction.FORWARD, "{}"),
                           [StepEvent("s-2", "", "saga", "COMPLETED")])
    finally:
        await engine.dispose()


def test_sagas_listed_and_a_parked_one_retried_only_when_allowed(tmp_path: Path) -> None:
    broker = f"sqlite:///{tmp_path}/bus.db"
    db = f"sqlite+aiosqlite:///{tmp_path}/orders.db"

    async def go() -> None:
        async with App("writer", broker=broker) as app:
            await app.publish("t", {})
        await _parked_saga(db)
        for allowed in (False, True):
            async with open_view(broker, [db], allow_actions=allowed) as view:
                async def documents() -> dict[str, object]:
                    return {}

                transport = httpx.ASGITransport(app=create_app(view, documents=documents))
                async with httpx.AsyncClient(transport=transport, base_url="http://c",
                                             headers={"X-Tidings-Console": "1"}) as c:
                    [listing] = (await c.get("/api/sagas")).json()
                    assert listing["db"] == "orders.db"
                    if not allowed:
                        assert listing["counts"]["PARKED"] == 1
                        assert listing["counts"]["COMPLETED"] == 1
                        parked = next(s for s in listing["sagas"] if s["id"] == "s-1")
                        assert parked["error"] == "payment gateway down"
                        assert [e["outcome"] for e in parked["history"]] == ["failed"]
                    retry = await c.post("/api/sagas/orders.db/s-1/retry")
                    if not allowed:
                        assert retry.status_code == 403
                        continue
                    assert retry.status_code == 200, retry.text
                    assert retry.json()["status"] == "RUNNING"
                    again = await c.post("/api/sagas/orders.db/s-2/retry")
                    assert again.status_code == 400 and "not parked" in again.json()["error"]
                    missing = await c.post("/api/sagas/nope/s-1/retry")
                    assert missing.status_code == 404

    asyncio.run(go())
