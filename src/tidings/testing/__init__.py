"""Helpers for testing services built on tidings, on the real in-memory backend.

:class:`TestBus` runs your apps on a fresh ``memory://`` broker, waits until they are
idle (no sleeps in tests), shows what they published as envelopes, and skips delays and
retry backoffs with a fake clock; see ``docs/testing.md``::

    async with TestBus(orders_app, billing_app, clock=True) as bus:
        await orders_app.publish("orders", {"id": 1, "total": 12})
        await bus.idle()
        bus.assert_published("invoices", {"order_id": 1})

``memory_url()`` gives an isolated ``memory://`` broker; ``crash(app)`` stops an app the
way a killed process stops (no commit, no leaving the group), so tests can check
redelivery without starting processes.
"""

from __future__ import annotations

import uuid

from .._app import App
from .._testbus import FakeClock, TestBus

__all__ = ["FakeClock", "TestBus", "crash", "memory_url"]


def memory_url(**options: float | int) -> str:
    """A ``memory://`` URL naming a fresh broker, with optional query options."""
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"memory://test-{uuid.uuid4().hex}" + (f"?{query}" if query else "")


def crash(app: App) -> None:
    """Stop ``app`` abruptly: handlers are cancelled, nothing is committed, its group
    membership stays until its lease expires."""
    app._abandon()
