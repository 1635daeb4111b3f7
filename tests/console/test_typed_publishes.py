"""An app's AsyncAPI document also lists what its typed publish calls sent (pydantic
models and dataclasses), declared or not; the app describes itself again on the bus so
the console sees them."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from pydantic import BaseModel

from tidings import App, Outgoing
from tidings.asyncapi import document, read_documents


class OrderPlaced(BaseModel):
    order_id: str
    total: float


@dataclasses.dataclass
class Shipped:
    order_id: str


def test_typed_publish_calls_join_the_document_and_the_bus_description(tmp_path: Path) -> None:
    broker = f"sqlite:///{tmp_path}/bus.db"

    async def main() -> None:
        app = App("orders", broker=broker)

        @app.subscriber("payments")
        async def paid(event: dict) -> None: ...

        async with app:
            assert "orders" not in document(app)["channels"]
            await app.publish("orders", OrderPlaced(order_id="o-1", total=3.0))
            await app.publish("orders", OrderPlaced(order_id="o-2", total=4.0))
            await app.publish_many("shipments", [Shipped("o-1")])
            await app.publish_batch([Outgoing("audit", {"plain": "dict"})])
            sends = {op["channel"]["$ref"] for op in document(app)["operations"].values()
                     if op["action"] == "send"}
            assert sends == {"#/channels/orders", "#/channels/shipments"}
            await asyncio.sleep(1.3)  # described again within a second
            described = (await read_documents(app.transport))["orders"]
            assert {"orders", "shipments", "payments"} <= set(described["channels"])
            assert "audit" not in described["channels"]  # a dict says nothing reliable
            schemas = described["components"]["schemas"]
            assert schemas["OrderPlaced"]["required"] == ["order_id", "total"]

    asyncio.run(main())
