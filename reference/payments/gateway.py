"""The simulated card gateway and the payment ledger, idempotent per order.

Test cards: 4242424242424242 approves, 4000000000000002 declines; any other number that
passes the Luhn check approves too. One ledger row per order (its primary key) makes a
repeated charge request re-announce the recorded outcome instead of charging twice.
"""

from __future__ import annotations

from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, insert, select, update

from ..common.cards import luhn_valid
from ..common.events import PaymentDeclined, PaymentRefunded, PaymentSucceeded, Topics
from ..common.messaging import Tx

__all__ = ["APPROVE", "DECLINE", "DECLINED_REASON", "Ledger", "PaymentEvent"]

PaymentEvent = PaymentSucceeded | PaymentDeclined | PaymentRefunded

APPROVE = "4242424242424242"
DECLINE = "4000000000000002"
DECLINED_REASON = "payment declined"
SUCCEEDED, DECLINED, REFUNDED = "SUCCEEDED", "DECLINED", "REFUNDED"


class Ledger:
    """Payments (one per order) and, in choreography, what each order will be charged."""

    def __init__(self, metadata: MetaData) -> None:
        self.payments = Table(
            "payments", metadata,
            Column("order_id", String, primary_key=True),
            Column("amount_cents", Integer, nullable=False),
            Column("status", String, nullable=False),
            Column("card_last4", String, nullable=False),
        )
        self.intents = Table(
            "intents", metadata,
            Column("order_id", String, primary_key=True),
            Column("amount_cents", Integer, nullable=False),
            Column("card_number", String, nullable=False),
        )
        # Built once, reused with new parameters (SQLAlchemy caches their compiled form).
        c = self.payments.c
        self._find = select(c.status, c.amount_cents).where(c.order_id == bindparam("oid"))
        self._insert = insert(self.payments)
        self._refund = update(self.payments).where(c.order_id == bindparam("oid")).values(
            status=REFUNDED)

    async def find(self, tx: Tx, order_id: str) -> tuple[str, int] | None:
        """The order's payment status and amount, if it was charged."""
        row = (await tx.conn.execute(self._find, {"oid": order_id})).first()
        return None if row is None else (row.status, row.amount_cents)

    async def charge(self, tx: Tx, order_id: str, amount_cents: int, card: str
                     ) -> PaymentEvent:
        """Charge the card once per order and announce the outcome."""
        known = await self.find(tx, order_id)
        if known is None:
            status = DECLINED if card == DECLINE or not luhn_valid(card) else SUCCEEDED
            await tx.conn.execute(self._insert, {
                "order_id": order_id, "amount_cents": amount_cents, "status": status,
                "card_last4": card[-4:],
            })
            known = (status, amount_cents)
        return await self._announce(tx, order_id, *known)

    async def refund(self, tx: Tx, order_id: str) -> PaymentEvent | None:
        """Give a successful charge back (a cancelled order keeps no money); None if
        there was nothing to give back."""
        known = await self.find(tx, order_id)
        if known is None or known[0] == DECLINED:
            return None
        if known[0] == SUCCEEDED:
            await tx.conn.execute(self._refund, {"oid": order_id})
        return await self._announce(tx, order_id, REFUNDED, known[1])

    async def _announce(self, tx: Tx, order_id: str, status: str, amount_cents: int
                        ) -> PaymentEvent:
        event: PaymentEvent
        if status == SUCCEEDED:
            event = PaymentSucceeded(order_id=order_id, amount_cents=amount_cents)
        elif status == DECLINED:
            event = PaymentDeclined(order_id=order_id, reason=DECLINED_REASON)
        else:
            event = PaymentRefunded(order_id=order_id, amount_cents=amount_cents)
        await tx.emit(Topics.PAYMENTS, event, key=order_id)
        return event
