"""The scripted demo (``python -m reference.supervisor --once``): the article's scenario
and the three order outcomes, against running services."""

from __future__ import annotations

from collections.abc import Callable

from .client import APPROVE, DECLINE, ShopClient
from .common.settings import Settings

__all__ = ["scripted_demo"]


async def scripted_demo(settings: Settings, say: Callable[[str], None]) -> bool:
    """Register Alice, then place a confirmed, an out-of-stock and a declined order.
    Returns whether every outcome was the expected one."""
    ok = True
    async with ShopClient(settings) as shop:
        user = await shop.register("Alice Smith", 25, "Beijing")
        say(f"registered user {user['id']} ({user['username']})")
        order_id = await shop.order(user, [("TEA-001", 2), ("MUG-002", 1)], APPROVE)
        order = await shop.wait_final(user, order_id)
        say(f"order {order_id}: {order['status']} (total {order['total']})")
        ok &= order["status"] == "CONFIRMED"

        before = await shop.stock("LAMP-005")
        await shop.set_stock("LAMP-005", 0)
        order = await shop.wait_final(user, await shop.order(user, [("LAMP-005", 1)]))
        await shop.set_stock("LAMP-005", before["available"])
        say(f"out of stock: {order['status']}, reason {order['reason']!r}")
        ok &= order["status"] == "CANCELLED" and order["reason"] == "out of stock"

        before = await shop.stock("PEN-004")
        order = await shop.wait_final(user, await shop.order(user, [("PEN-004", 3)], DECLINE))
        after = await shop.stock("PEN-004")
        say(f"declined card: {order['status']}, reason {order['reason']!r}; PEN-004 "
            f"available {before['available']} -> {after['available']}")
        ok &= order["reason"] == "payment declined"
    say("demo passed" if ok else "demo FAILED")
    return bool(ok)
