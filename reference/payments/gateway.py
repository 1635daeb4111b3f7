"""The simulated card gateway, its card vault, and the payment ledger, idempotent per
order.

Test cards: 4242424242424242 approves, 4000000000000002 declines; any other number that
passes the Luhn check approves too. The vault (``POST /vault``) turns a number into a
card token (:class:`~reference.common.cards.CardToken`). A real gateway would keep the
number, encrypted, to send to the card network; the simulated one needs only the
network's answer, so the vault keeps that answer and the last four digits, and never the
number. One ledger row per order (its primary key) makes a repeated charge request
re-announce the recorded outcome instead of charging twice.
"""

from __future__ import annotations

import time

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from ..common.cards import CardToken
from ..common.events import PaymentDeclined, PaymentRefunded, PaymentSucceeded, Topics
from ..common.messaging import Tx
from ..common.settings import Settings

__all__ = ["APPROVE", "DECLINE", "DECLINED_REASON", "Ledger", "PaymentEvent"]

PaymentEvent = PaymentSucceeded | PaymentDeclined | PaymentRefunded

APPROVE = "4242424242424242"
DECLINE = "4000000000000002"
DECLINED_REASON = "payment declined"
SUCCEEDED, DECLINED, REFUNDED = "SUCCEEDED", "DECLINED", "REFUNDED"
APPROVES, DECLINES = "approves", "declines"


class Ledger:
    """Payments (one per order), the card vault and, in choreography, what each order
    will be charged."""

    def __init__(self, metadata: MetaData, settings: Settings) -> None:
        self.settings = settings
        self.payments = Table(
            "payments", metadata,
            Column("order_id", String, primary_key=True),
            Column("user_id", Integer, nullable=False),
            Column("amount_cents", Integer, nullable=False),
            Column("status", String, nullable=False),
            Column("card_last4", String, nullable=False),
        )
        self.intents = Table(
            "intents", metadata,
            Column("order_id", String, primary_key=True),
            Column("user_id", Integer, nullable=False),
            Column("amount_cents", Integer, nullable=False),
            Column("card_token", String, nullable=False),
        )
        self.vault = Table(
            "vault", metadata,
            Column("vault_id", String, primary_key=True),
            Column("user_id", Integer, nullable=False),
            Column("last4", String, nullable=False),
            Column("network_answer", String, nullable=False),
            Column("created_at", Float, nullable=False),
        )
        self._answer = select(self.vault.c.network_answer).where(
            self.vault.c.vault_id == bindparam("vid"), self.vault.c.user_id == bindparam("uid"))
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

    async def tokenize(self, conn: AsyncConnection, user_id: int, number: str) -> CardToken:
        """Put a (valid) card number in the vault for ``user_id``; its token."""
        card = CardToken.issue(user_id, number)
        await conn.execute(self.vault.insert().values(
            vault_id=card.vault_id, user_id=user_id, last4=card.last4, created_at=time.time(),
            network_answer=DECLINES if number == DECLINE else APPROVES))
        return card

    async def _approves(self, tx: Tx, user_id: int, token: str) -> bool:
        card = CardToken.decode(self.settings, token, user_id)
        if card is None:
            return False
        answer = await tx.conn.scalar(self._answer, {"vid": card.vault_id, "uid": user_id})
        return answer == APPROVES

    async def charge(self, tx: Tx, order_id: str, user_id: int, amount_cents: int,
                     card_token: str) -> PaymentEvent:
        """Charge the user's tokenized card once per order and announce the outcome."""
        known = await self.find(tx, order_id)
        if known is None:
            approved = await self._approves(tx, user_id, card_token)
            status = SUCCEEDED if approved else DECLINED
            await tx.conn.execute(self._insert, {
                "order_id": order_id, "user_id": user_id, "amount_cents": amount_cents,
                "status": status, "card_last4": card_token.partition(".")[0][-4:],
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
