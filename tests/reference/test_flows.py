"""End to end, every service its own process: the article's scenario and the three order
outcomes, in both modes (choreography, orchestration), on the embedded bus and on Kafka."""

from __future__ import annotations

import time
from typing import Any

from shop import Shop

APPROVE = "4242424242424242"
DECLINE = "4000000000000002"


def register(shop: Shop, username: str) -> dict[str, Any]:
    response = shop.http.post(shop.url("users", "/register"),
                              json={"username": username, "age": 30, "address": "Hangzhou"})
    assert response.status_code == 201, response.text
    user: dict[str, Any] = response.json()
    return user


def place(shop: Shop, user_id: int, items: list[tuple[str, int]], card: str = APPROVE) -> str:
    body = {"user_id": user_id, "card_number": card,
            "items": [{"sku": sku, "qty": qty} for sku, qty in items]}
    response = shop.http.post(shop.url("orders", "/orders"), json=body)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "PENDING"
    order_id: str = accepted["order_id"]
    return order_id


def final(shop: Shop, order_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        order: dict[str, Any] = shop.http.get(shop.url("orders", f"/orders/{order_id}")).json()
        if order["status"] != "PENDING":
            return order
        assert time.monotonic() < deadline, f"order still pending: {order}"
        time.sleep(0.05)


def stock(shop: Shop, sku: str) -> dict[str, Any]:
    level: dict[str, Any] = shop.http.get(shop.url("inventory", f"/stock/{sku}")).json()
    return level


def wait_stock(shop: Shop, sku: str, **expected: int) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        level = stock(shop, sku)
        if all(level[k] == v for k, v in expected.items()):
            return level
        assert time.monotonic() < deadline, f"{sku}: {level}, expected {expected}"
        time.sleep(0.05)


def test_article_scenario(shop: Shop) -> None:
    """The article's request: 201 with the user, then both log lines."""
    body = {"username": "Alice Smith", "age": 25, "address": "Beijing"}
    response = shop.http.post(shop.url("users", "/register"), json=body)
    assert response.status_code == 201
    user = response.json()
    assert list(user) == ["id", "username", "age", "address"]
    assert user == {"id": user["id"], **body}
    assert shop.http.get(shop.url("users", f"/users/{user['id']}")).json() == user
    shop.wait_for_line("users", f"New user created with ID {user['id']}")
    shop.wait_for_line("notifications",
                       f"Received registration event for user {user['id']} (Alice Smith)")


def test_confirmed_order(shop: Shop) -> None:
    user = register(shop, "Bob Li")
    before = stock(shop, "TEA-001")
    order_id = place(shop, user["id"], [("TEA-001", 2), ("MUG-002", 1)])
    order = final(shop, order_id)
    assert order["status"] == "CONFIRMED", order
    assert order["reason"] is None
    assert order["total"] == 2 * 12.5 + 8.0
    assert order["items"] == [{"sku": "TEA-001", "qty": 2}, {"sku": "MUG-002", "qty": 1}]
    payment = shop.http.get(shop.url("payments", f"/payments/{order_id}")).json()
    assert payment["status"] == "SUCCEEDED" and payment["amount"] == 33.0
    wait_stock(shop, "TEA-001", available=before["available"] - 2,
               reserved=before["reserved"], sold=before["sold"] + 2)
    mine = shop.http.get(shop.url("orders", "/orders"), params={"user_id": user["id"]}).json()
    assert [o["order_id"] for o in mine] == [order_id]


def test_out_of_stock_order(shop: Shop) -> None:
    user = register(shop, "Carol Wang")
    assert shop.http.put(shop.url("inventory", "/stock/LAMP-005"),
                         json={"available": 1}).status_code == 200
    order = final(shop, place(shop, user["id"], [("LAMP-005", 2)]))
    assert order["status"] == "CANCELLED" and order["reason"] == "out of stock", order
    assert shop.http.get(shop.url("payments", f"/payments/{order['order_id']}")).status_code \
        == 404
    assert stock(shop, "LAMP-005")["available"] == 1


def test_declined_payment_restores_stock(shop: Shop) -> None:
    user = register(shop, "Dan Zhao")
    before = stock(shop, "PEN-004")
    order_id = place(shop, user["id"], [("PEN-004", 3)], DECLINE)
    order = final(shop, order_id)
    assert order["status"] == "CANCELLED" and order["reason"] == "payment declined", order
    payment = shop.http.get(shop.url("payments", f"/payments/{order_id}")).json()
    assert payment["status"] == "DECLINED"
    wait_stock(shop, "PEN-004", available=before["available"], reserved=before["reserved"],
               sold=before["sold"])
