"""docs/kafka.md, exactly-once: each order's invoice appears once, in one Kafka
transaction with the order's offset. Needs a Kafka URL in $TIDINGS_BROKER."""

import asyncio

from pydantic import BaseModel

from tidings import App, Message

app = App("billing")


class Order(BaseModel):
    order_id: str
    total: int


def invoice_for(order: Order) -> dict:
    return {"order_id": order.order_id, "amount": order.total}


@app.subscriber("orders", exactly_once=True)
async def bill(order: Order, message: Message) -> None:
    await app.publish("invoices", invoice_for(order), key=message.key)


async def main() -> None:
    invoices: asyncio.Queue[dict] = asyncio.Queue()
    reader = App("invoice-reader", broker=app.broker)

    @reader.subscriber("invoices")
    async def read(invoice: dict) -> None:
        await invoices.put(invoice)

    async with app, reader:
        await app.publish("orders", {"order_id": "o-1", "total": 30}, key="o-1")
        print("invoice:", await asyncio.wait_for(invoices.get(), 60))


if __name__ == "__main__":
    asyncio.run(main())
