"""The orders service's event-sourced history (``GET /orders/{id}/history``) and its fraud
rules (``reference/orders/fraud.yaml``), in both modes on the embedded bus."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reference.client import bearer
from shop import Shop, running_shop
from test_flows import DECLINE, final, place, register

MODES = ["choreography", "orchestration"]


@pytest.fixture(scope="module", params=MODES)
def mode_shop(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Shop]:
    """A shop on the embedded bus in each mode."""
    with running_shop(tmp_path_factory.mktemp(f"shop-{request.param}"), request.param) as shop:
        yield shop


def history(shop: Shop, user: dict[str, Any], order_id: str) -> list[dict[str, Any]]:
    response = shop.http.get(shop.url("orders", f"/orders/{order_id}/history"),
                             headers=bearer(user["token"]))
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()
    return entries


def test_history_of_a_confirmed_order(mode_shop: Shop) -> None:
    user = register(mode_shop, "Erin Xu")
    started = time.time()
    order_id = place(mode_shop, user, [("TEA-001", 2)])
    assert final(mode_shop, user, order_id)["status"] == "CONFIRMED"
    entries = history(mode_shop, user, order_id)
    assert [(e["version"], e["type"]) for e in entries] == [
        (1, "OrderCreated"), (2, "OrderConfirmed")]
    created = entries[0]["data"]
    assert created["order_id"] == order_id and created["user_id"] == user["id"]
    assert created["total_cents"] == 2500
    assert created["items"] == [{"sku": "TEA-001", "qty": 2}]
    assert created["card_last4"] == "4242"  # and the vault's token, never the number
    assert created["card_token"].startswith("card_") and "card_number" not in created
    assert started - 1 <= entries[0]["at"] <= entries[1]["at"] <= time.time()


def test_history_of_a_cancelled_order(mode_shop: Shop) -> None:
    user = register(mode_shop, "Finn Gao")
    order_id = place(mode_shop, user, [("PEN-004", 1)], DECLINE)
    assert final(mode_shop, user, order_id)["status"] == "CANCELLED"
    entries = history(mode_shop, user, order_id)
    assert [e["type"] for e in entries] == ["OrderCreated", "OrderCancelled"]
    assert entries[1]["data"] == {"type": "ORDER_CANCELLED", "order_id": order_id,
                                  "reason": "payment declined"}


def test_history_of_an_unknown_order_is_404(mode_shop: Shop) -> None:
    user = register(mode_shop, "Nobody Ng")
    response = mode_shop.http.get(mode_shop.url("orders", "/orders/nope/history"),
                                  headers=bearer(user["token"]))
    assert response.status_code == 404 and "detail" in response.json()


def test_fraud_rule_cancels_a_large_order_from_a_new_account(mode_shop: Shop) -> None:
    user = register(mode_shop, "Gus Hu")
    body = {"user_id": user["id"], "card_token": mode_shop.card_token(user),
            "items": [{"sku": "SILK-006", "qty": 10}]}  # 590.00, over the 500.00 limit
    before = mode_shop.http.get(mode_shop.url("inventory", "/stock/SILK-006")).json()
    response = mode_shop.http.post(mode_shop.url("orders", "/orders"), json=body,
                                   headers=bearer(user["token"]))
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "CANCELLED"
    order = final(mode_shop, user, response.json()["order_id"])
    assert order["status"] == "CANCELLED"
    assert order["reason"] == "fraud: large-order-new-account", order
    assert [e["type"] for e in history(mode_shop, user, order["order_id"])] == [
        "OrderCreated", "OrderCancelled"]
    # Never announced as created: no reservation, no charge.
    assert mode_shop.http.get(mode_shop.url("inventory", "/stock/SILK-006")).json() == before
    assert mode_shop.http.get(mode_shop.url("payments", f"/payments/{order['order_id']}"),
                              headers=bearer(user["token"])).status_code == 404
    # A small order from the same new account goes through.
    assert final(mode_shop, user, place(mode_shop, user, [("SILK-006", 1)]))["status"] \
        == "CONFIRMED"


def test_a_broken_rule_file_is_reported_not_fatal(tmp_path: Path) -> None:
    rules = tmp_path / "fraud.yaml"
    rules.write_text("rules:\n  - name: typo\n    topic: order-checks\n"
                     "    when: totl_cents > 1\n    then: [{tag: cancel}]\n")
    with running_shop(tmp_path, fraud_rules=rules) as shop:
        assert shop.http.get(shop.url("orders", "/fraud-rules")).status_code == 401
        report = shop.http.get(shop.url("orders", "/fraud-rules"), headers=shop.admin).json()
        assert report["rules"] == [] and "totl_cents" in report["error"], report
        assert set(report) == {"rules", "error"}  # not where the rule file is
        assert str(rules) not in str(report)
        assert any("fraud rules not loaded" in line for line in shop.lines("orders"))
        user = register(shop, "Hana Lu")  # orders are still taken, unchecked
        assert final(shop, user, place(shop, user, [("SILK-006", 10)]))["status"] \
            == "CONFIRMED"
        rules.write_text("rules:\n  - name: any-order\n    topic: order-checks\n"
                         "    when: total_cents > 1\n    then: [{tag: cancel}]\n")
        deadline = time.monotonic() + 10
        while shop.http.get(shop.url("orders", "/fraud-rules"),
                            headers=shop.admin).json()["rules"] != ["any-order"]:
            assert time.monotonic() < deadline, "the fixed rule file was never loaded"
            time.sleep(0.2)
        body = {"user_id": user["id"], "card_token": shop.card_token(user),
                "items": [{"sku": "TEA-001", "qty": 1}]}
        accepted = shop.http.post(shop.url("orders", "/orders"), json=body,
                                  headers=bearer(user["token"])).json()
        assert final(shop, user, accepted["order_id"])["reason"] == "fraud: any-order"
