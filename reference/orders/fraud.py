"""Fraud rules on new orders (``reference/orders/fraud.yaml``, :mod:`tidings.rules`).

Every new order is checked before its flow starts, in the ``POST /orders`` handler:
the facts are an :class:`OrderCheck`, evaluated as a message on the ``order-checks``
topic (it is never sent: nothing outside this service needs it). A rule that tags
``cancel`` makes the order CANCELLED at once with the reason ``"fraud: <rule>"``; it is
never announced as created, so inventory and payments have nothing to undo.

A rule file that does not load at start-up is reported (logged, and on
``GET /fraud-rules``) rather than stopping the service: orders are taken unchecked until the
file is fixed, which is noticed within a second. Once loaded, the engine reloads the file
itself, and a later broken edit keeps the previous rules active.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydantic import BaseModel

from tidings import Message
from tidings.rules import RuleEngine, RuleError

__all__ = ["CHECKS", "RULES", "FraudCheck", "OrderCheck"]

log = logging.getLogger("reference.orders.fraud")

RULES = Path(__file__).with_name("fraud.yaml")
CHECKS = "order-checks"
CANCEL = "cancel"
#: Constants the rules read as ``context.<name>``.
CONTEXT = {"large_order_cents": 50_000}


class OrderCheck(BaseModel):
    """What the fraud rules see of a new order."""

    order_id: str
    user_id: int
    total_cents: int
    lines: int
    account_age_s: float


class FraudCheck:
    """The fraud rules of ``path``, or the reason they are not loaded."""

    def __init__(self, path: Path = RULES) -> None:
        self.path = path
        self.engine: RuleEngine | None = None
        self.error: str | None = None
        self._tried: tuple[float, int] | None = None
        self._retry_at = 0.0
        self._load()

    def _load(self) -> None:
        try:
            stat = self.path.stat()
            stamp: tuple[float, int] | None = (stat.st_mtime, stat.st_size)
        except OSError:
            stamp = None
        if stamp is not None and stamp == self._tried:
            return  # the same broken file: reported already
        self._tried = stamp
        try:
            self.engine = RuleEngine(files=[self.path], schemas={CHECKS: OrderCheck},
                                     context=CONTEXT, reload_interval=None)
        except RuleError as exc:
            self.error = str(exc)
            log.error("fraud rules not loaded, orders are not checked until %s is fixed: %s",
                      self.path, exc)
            return
        self.error = None
        log.info("fraud rules loaded from %s: %s", self.path,
                 ", ".join(self.engine.rule_names) or "none")

    def refresh(self) -> None:
        """Load the file if it changed (at most once a second)."""
        if time.monotonic() < self._retry_at:
            return
        self._retry_at = time.monotonic() + 1.0
        if self.engine is None:
            self._load()
        else:
            self.engine.reload()

    def status_error(self) -> str | None:
        """Why the rule file is not (or, on a reload, no longer) loaded; None if it is."""
        self.refresh()
        if self.engine is not None and self.engine.errors:
            return str(next(iter(self.engine.errors.values())))
        return self.error

    async def verdict(self, check: OrderCheck) -> str | None:
        """The cancellation reason (``"fraud: <rule>"``) if a rule says cancel, else None."""
        self.refresh()
        if self.engine is None:
            return None
        decision = await self.engine.evaluate(check, Message(
            id=check.order_id, topic=CHECKS, partition=0, offset=0, key=str(check.user_id),
            headers={}, timestamp=time.time(), attempt=1, correlation_id=None,
            causation_id=None, body=b""))
        if CANCEL not in decision.tags:
            return None
        rules = [f.rule for f in decision.fired]
        return f"fraud: {', '.join(rules)}"
