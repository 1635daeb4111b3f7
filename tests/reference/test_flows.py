"""End to end, every service its own process: the article's scenario and the three order
outcomes, in both modes (choreography, orchestration), on the embedded bus, on Kafka and
on RabbitMQ."""

from __future__ import annotations

import time
import uuid
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from reference.client import bearer
from shop import Shop

from otlp_collector import Collector

APPROVE = "4242424242424242"
DECLINE = "4000000000000002"
SERVER, CONSUMER = 2, 5  # OTLP span kinds


def register(shop: Shop, username: str, headers: dict[str, str] | None = None
             ) -> dict[str, Any]:
    response = shop.http.post(shop.url("users", "/register"), headers=headers,
                              json={"username": username, "age": 30, "address": "Hangzhou"})
    assert response.status_code == 201, response.text
    user: dict[str, Any] = response.json()
    return user


def place(shop: Shop, user: dict[str, Any], items: list[tuple[str, int]], card: str = APPROVE,
          headers: dict[str, str] | None = None) -> str:
    body = {"user_id": user["id"], "card_token": shop.card_token(user, card),
            "items": [{"sku": sku, "qty": qty} for sku, qty in items]}
    response = shop.http.post(shop.url("orders", "/orders"), json=body,
                              headers={**bearer(user["token"]), **(headers or {})})
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "PENDING"
    order_id: str = accepted["order_id"]
    return order_id


def final(shop: Shop, user: dict[str, Any], order_id: str, timeout: float = 30.0
          ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        order: dict[str, Any] = shop.http.get(shop.url("orders", f"/orders/{order_id}"),
                                              headers=bearer(user["token"])).json()
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
    assert list(user) == ["id", "username", "age", "address", "token"]
    token = user.pop("token")
    assert user == {"id": user["id"], **body}
    assert shop.http.get(shop.url("users", f"/users/{user['id']}"),
                         headers=bearer(token)).json() == user
    shop.wait_for_line("users", f"New user created with ID {user['id']}")
    shop.wait_for_line("notifications",
                       f"Received registration event for user {user['id']} (Alice Smith)")


def test_confirmed_order(shop: Shop) -> None:
    user = register(shop, "Bob Li")
    before = stock(shop, "TEA-001")
    order_id = place(shop, user, [("TEA-001", 2), ("MUG-002", 1)])
    order = final(shop, user, order_id)
    assert order["status"] == "CONFIRMED", order
    assert order["reason"] is None
    assert order["total"] == 2 * 12.5 + 8.0
    assert order["items"] == [{"sku": "TEA-001", "qty": 2}, {"sku": "MUG-002", "qty": 1}]
    payment = shop.http.get(shop.url("payments", f"/payments/{order_id}"),
                            headers=bearer(user["token"])).json()
    assert payment["status"] == "SUCCEEDED" and payment["amount"] == 33.0
    wait_stock(shop, "TEA-001", available=before["available"] - 2,
               reserved=before["reserved"], sold=before["sold"] + 2)
    mine = shop.http.get(shop.url("orders", "/orders"), headers=bearer(user["token"])).json()
    assert [o["order_id"] for o in mine] == [order_id]


def test_out_of_stock_order(shop: Shop) -> None:
    user = register(shop, "Carol Wang")
    assert shop.http.put(shop.url("inventory", "/stock/LAMP-005"), headers=shop.admin,
                         json={"available": 1}).status_code == 200
    order = final(shop, user, place(shop, user, [("LAMP-005", 2)]))
    assert order["status"] == "CANCELLED" and order["reason"] == "out of stock", order
    assert shop.http.get(shop.url("payments", f"/payments/{order['order_id']}"),
                         headers=bearer(user["token"])).status_code == 404
    assert stock(shop, "LAMP-005")["available"] == 1


def test_declined_payment_restores_stock(shop: Shop) -> None:
    user = register(shop, "Dan Zhao")
    before = stock(shop, "PEN-004")
    order_id = place(shop, user, [("PEN-004", 3)], DECLINE)
    order = final(shop, user, order_id)
    assert order["status"] == "CANCELLED" and order["reason"] == "payment declined", order
    payment = shop.http.get(shop.url("payments", f"/payments/{order_id}"),
                            headers=bearer(user["token"])).json()
    assert payment["status"] == "DECLINED"
    wait_stock(shop, "PEN-004", available=before["available"], reserved=before["reserved"],
               sold=before["sold"])


BUS_SERVICES = ("users", "orders", "inventory", "payments", "notifications")


def _traced() -> tuple[str, dict[str, str]]:
    """A new trace id, and the W3C header that makes a request part of it (so the test
    finds its own request's trace among every other test's)."""
    trace_id = uuid.uuid4().hex
    return trace_id, {"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"}


def _trace(collector: Collector, trace_id: str, service: str, name: str,
           needs: set[str]) -> set[str]:
    """The services in trace ``trace_id``, once it holds ``needs`` and its request's
    server span, ``name`` on ``service`` (spans are batched: wait up to 30 s); that server
    span is there once."""
    deadline = time.monotonic() + 30
    while True:
        spans = [s for s in collector.spans() if s.trace_id == trace_id]
        services = {s.service for s in spans}
        roots = [s for s in spans if s.service == service and s.name == name
                 and s.kind == SERVER]
        # a service exports its spans in batches: the request's children may arrive one
        # batch before its server span (which ends last), so wait for both
        if (needs <= services and roots) or time.monotonic() > deadline:
            assert len(roots) == 1, "one request, one server span"
            return services
        time.sleep(0.1)


def test_one_request_is_one_trace_across_every_service_it_touches(
        shop: Shop, collector: Collector) -> None:
    trace_id, headers = _traced()
    user = register(shop, "Tracy Trace", headers)
    services = _trace(collector, trace_id, "users", "POST /register",
                      {"users", "notifications"})
    assert {"users", "notifications"} <= services, services

    trace_id, headers = _traced()
    order_id = place(shop, user, [("TEA-001", 1)], headers=headers)
    assert final(shop, user, order_id)["status"] == "CONFIRMED"
    services = _trace(collector, trace_id, "orders", "POST /orders",
                      {"orders", "inventory", "payments"})
    assert {"orders", "inventory", "payments"} <= services, services
    process = [s for s in collector.spans() if s.trace_id == trace_id
               and s.name.startswith("process ")]
    assert process and all(s.kind == CONSUMER for s in process)
    assert {s.attributes["messaging.system"] for s in process} <= {"sqlite", "kafka", "rabbitmq"}


def test_an_idle_shop_has_lag_0_everywhere(shop: Shop) -> None:
    # An order first, so that every service's groups have handled (and committed)
    # something, whichever test ran before: tansu lists no members, so a group that
    # never committed has no lag to show there (Kafka shows its members' partitions).
    user = register(shop, "Idle Ida")
    assert final(shop, user, place(shop, user, [("TEA-001", 1)]))["status"] == "CONFIRMED"
    deadline = time.monotonic() + 30
    while True:
        lags = {}
        for service in BUS_SERVICES:
            response = shop.http.get(shop.url(service, "/metrics"))
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            for family in text_string_to_metric_families(response.text):
                if family.name == "tidings_consumer_lag":
                    lags.update({(service, s.labels["topic"], s.labels["partition"]): s.value
                                 for s in family.samples})
        # users consumes only its cron job's ticks (the inbox pruning): whether it
        # reports a lag before the first tick depends on the bus. A service whose
        # consumers have not been given their partitions yet reports none: wait for it.
        missing = set(BUS_SERVICES) - {"users"} - {service for service, _, _ in lags}
        if not missing and set(lags.values()) == {0.0}:
            break
        assert time.monotonic() < deadline, \
            (missing, {k: v for k, v in lags.items() if v})
        time.sleep(0.5)
    if shop.settings.mode.value == "orchestration":  # orders settled by sagas before
        text = shop.http.get(shop.url("orders", "/metrics")).text
        sagas = {s.labels["status"]: s.value for f in text_string_to_metric_families(text)
                 if f.name == "tidings_sagas" for s in f.samples}
        assert sagas["COMPLETED"] >= 1 and sagas["RUNNING"] == 0, sagas
    for service in BUS_SERVICES:
        ready = shop.http.get(shop.url(service, "/ready"))
        assert ready.status_code == 200 and ready.json()["ready"] is True, ready.text


def test_order_conversation_in_the_console(shop: Shop) -> None:
    """The console rebuilds a confirmed order's conversation from the bus: its steps in
    order (events in choreography; the saga's commands and their replies in
    orchestration), each handled by the service that reacts to it."""
    user = register(shop, "Tess Console")
    order_id = place(shop, user, [("TEA-001", 1)])
    assert final(shop, user, order_id)["status"] == "CONFIRMED"
    deadline = time.monotonic() + 20
    while True:
        data = shop.http.get(shop.url("console", f"/api/conversations/{order_id}")).json()
        types = [(m["type"], m["topic"]) for m in data["messages"]]
        wanted = ["ORDER_CREATED", "STOCK_RESERVED", "PAYMENT_SUCCEEDED", "ORDER_CONFIRMED"]
        if ("RESERVE_STOCK", "inventory-commands") in types:  # orchestration
            wanted = ["RESERVE_STOCK", "STOCK_RESERVED", "CHARGE_PAYMENT",
                      "PAYMENT_SUCCEEDED", "ORDER_CONFIRMED"]
        firsts: dict[str, dict[str, Any]] = {}
        for message in data["messages"]:
            if message["type"] in wanted:
                firsts.setdefault(message["type"], message)
        steps = sorted(firsts.values(), key=lambda m: m["published_at"])
        settled = all(h["outcome"] == "handled" for m in steps for h in m["handled_by"])
        if [m["type"] for m in steps] == wanted and settled:
            break
        assert time.monotonic() < deadline, f"timeline so far: {types}"
        time.sleep(0.2)
    for message in data["messages"]:
        assert {"topic", "partition", "offset", "id", "correlation_id", "causation_id", "key",
                "type", "published_at", "handled_by"} <= set(message)
        assert "4242424242424242" not in str(message["payload"])
    assert any(m["key"] == order_id for m in steps)  # found by the order id (its key)
    # each step names the service that published it: orders starts the conversation
    assert steps[0]["published_by"] == "orders" and all(m["published_by"] for m in steps)
    # each step is some group's input (a reply goes to the requester, in no group)
    consumed = {m["type"] for m in data["messages"]
                if m["handled_by"] or m["topic"] == "tidings.replies"}
    assert set(wanted[:-1]) <= consumed
    assert [m["published_at"] for m in steps] == sorted(m["published_at"] for m in steps)
    missing = shop.http.get(shop.url("console", "/api/conversations/no-such-order")).json()
    assert missing["messages"] == [] and missing["note"] == "no messages for no-such-order"
