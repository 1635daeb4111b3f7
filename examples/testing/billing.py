"""A billing service: invoices each order, retrying a busy ledger, and reminds a customer
a day later if the invoice is still unpaid."""

from pydantic import BaseModel

from tidings import App, Message, RetryPolicy

app = App("billing", retry=RetryPolicy(max_attempts=4, backoff=30))


class OrderPlaced(BaseModel):
    order_id: int
    customer: str
    total: int


class Ledger:
    """Stands for a remote ledger that is sometimes busy."""

    def __init__(self) -> None:
        self.busy: dict[int, int] = {}  # order id: how many of its next calls fail
        self.entries: list[int] = []

    def record(self, order_id: int) -> None:
        if self.busy.get(order_id, 0) > 0:
            self.busy[order_id] -= 1
            raise ConnectionError("ledger busy")
        self.entries.append(order_id)


ledger = Ledger()


@app.subscriber("orders")
async def invoice(order: OrderPlaced, message: Message) -> None:
    ledger.record(order.order_id)
    await app.publish("invoices", {"order_id": order.order_id, "amount": order.total},
                      key=message.key)
    await app.publish("reminders", {"order_id": order.order_id, "to": order.customer},
                      key=message.key, delay=24 * 3600)


@app.subscriber("reminders")
async def remind(reminder: dict) -> None:
    await app.publish("emails", {"to": reminder["to"], "subject": "Your invoice"})
