"""Chaos: 200 orders while inventory, payments and orders are SIGKILLed at random moments
(the supervisor restarts them). Within 60 s of the last restart every order is final,
within 60 s more no stock is left reserved, and the invariants hold."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from reference.client import bearer
from reference.inventory.catalog import CATALOG
from shop import Shop, running_shop

ORDERS = 200
USERS = 20
STOCK = 70  # per SKU: some orders run out of stock
VICTIMS = ("inventory", "payments", "orders")
APPROVE, DECLINE = "4242424242424242", "4000000000000002"


@pytest.fixture(scope="module", params=["choreography", "orchestration"])
def chaos_shop(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Shop]:
    with running_shop(tmp_path_factory.mktemp(f"chaos-{request.param}"), request.param) as shop:
        yield shop


async def _call(http: httpx.AsyncClient, method: str, url: str, **kw: Any) -> httpx.Response:
    """Retry while the service is down (it is being restarted)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return await http.request(method, url, **kw)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _place_orders(shop: Shop, http: httpx.AsyncClient, users: list[dict[str, Any]]
                        ) -> int:
    rng = random.Random(7)
    accepted = 0
    for n in range(ORDERS):
        items = [{"sku": rng.choice(CATALOG).sku, "qty": rng.randint(1, 3)}
                 for _ in range(rng.randint(1, 2))]
        card = DECLINE if rng.random() < 0.2 else APPROVE
        user = users[n % len(users)]
        body = {"user_id": user["id"], "items": items, "card_token": user["cards"][card]}
        response = await _call(http, "POST", shop.url("orders", "/orders"), json=body,
                               headers=bearer(user["token"]))
        assert response.status_code == 202, response.text
        accepted += 1
        await asyncio.sleep(0.05)
    return accepted


async def _pid(shop: Shop, http: httpx.AsyncClient, service: str) -> int:
    response = await _call(http, "GET", shop.url(service, "/health"))
    pid: int = response.json()["pid"]
    return pid


async def _kill_at_random(shop: Shop, http: httpx.AsyncClient, placing: asyncio.Task[int]
                          ) -> list[str]:
    rng = random.Random(11)
    killed: list[str] = []
    while not placing.done():
        await asyncio.sleep(rng.uniform(0.7, 2.0))
        victim = VICTIMS[len(killed) % len(VICTIMS)] if len(killed) < 3 else rng.choice(VICTIMS)
        pid = await _pid(shop, http, victim)
        os.kill(pid, signal.SIGKILL)
        killed.append(victim)
        deadline = time.monotonic() + 30
        while await _pid(shop, http, victim) == pid:  # the supervisor restarts it
            assert time.monotonic() < deadline, f"{victim} was not restarted"
            await asyncio.sleep(0.1)
    return killed


async def _orders(shop: Shop, http: httpx.AsyncClient, users: list[dict[str, Any]]
                  ) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for user in users:
        response = await _call(http, "GET", shop.url("orders", "/orders"),
                               params={"limit": 100}, headers=bearer(user["token"]))
        assert "x-next-cursor" not in response.headers  # at most 10 orders a user
        found.extend(response.json())
    return found


async def _wait_final(shop: Shop, http: httpx.AsyncClient, users: list[dict[str, Any]]
                      ) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    while True:
        orders = await _orders(shop, http, users)
        pending = [o for o in orders if o["status"] == "PENDING"]
        if not pending:
            return orders
        assert time.monotonic() < deadline, f"{len(pending)} orders still pending"
        await asyncio.sleep(0.5)


async def _wait_stock_settled(shop: Shop, http: httpx.AsyncClient) -> dict[str, Any]:
    """The stock levels once nothing is reserved any more, or after 60 s.

    An order turns final before its stock does: committing the stock runs alongside
    confirming the order (a parallel saga step, or inventory's own subscriber to the
    payment in choreography), and may be retried while inventory restarts. A commit or
    a release that never comes leaves units reserved, and the invariants below fail.
    """
    deadline = time.monotonic() + 60
    while True:
        stock = {p.sku: (await _call(http, "GET", shop.url("inventory", f"/stock/{p.sku}"))
                         ).json() for p in CATALOG}
        if not any(level["reserved"] for level in stock.values()) \
                or time.monotonic() > deadline:
            return stock
        await asyncio.sleep(0.5)


async def _chaos(shop: Shop) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=15) as http:
        users = []
        for i in range(USERS):
            body = {"username": f"chaos user {i}", "age": 20 + i, "address": "Chengdu"}
            user = (await _call(http, "POST", shop.url("users", "/register"), json=body)).json()
            user["cards"] = {card: (await _call(
                http, "POST", shop.url("payments", "/vault"), json={"card_number": card},
                headers=bearer(user["token"]))).json()["card_token"]
                for card in (APPROVE, DECLINE)}
            users.append(user)
        for product in CATALOG:
            await _call(http, "PUT", shop.url("inventory", f"/stock/{product.sku}"),
                        json={"available": STOCK}, headers=shop.admin)
        placing = asyncio.create_task(_place_orders(shop, http, users))
        killed = await _kill_at_random(shop, http, placing)
        accepted = await placing
        orders = await _wait_final(shop, http, users)
        stock = await _wait_stock_settled(shop, http)
        tokens = {user["id"]: bearer(user["token"]) for user in users}
        payments = {o["order_id"]: (await _call(
            http, "GET", shop.url("payments", f"/payments/{o['order_id']}"),
            headers=tokens[o["user_id"]])) for o in orders}
    return {"users": [user["id"] for user in users], "accepted": accepted, "killed": killed,
            "orders": orders, "stock": stock, "payments": payments}


def test_orders_settle_and_invariants_hold_under_sigkill(chaos_shop: Shop) -> None:
    result = asyncio.run(_chaos(chaos_shop))
    orders, stock, payments = result["orders"], result["stock"], result["payments"]
    kills = Counter(result["killed"])
    assert all(kills[v] >= 1 for v in VICTIMS), kills
    assert len(orders) >= result["accepted"] == ORDERS
    statuses = Counter(o["status"] for o in orders)
    sold: Counter[str] = Counter()
    for order in orders:
        payment = payments[order["order_id"]]
        if order["status"] == "CONFIRMED":
            assert payment.status_code == 200 and payment.json()["status"] == "SUCCEEDED"
            assert payment.json()["amount"] == order["total"]
            for line in order["items"]:  # an order may list a SKU twice
                sold[line["sku"]] += line["qty"]
        else:
            assert order["reason"] in ("out of stock", "payment declined"), order
            assert payment.status_code == 404 or payment.json()["status"] != "SUCCEEDED"
    for sku, level in stock.items():
        assert level["available"] + level["reserved"] + level["sold"] == STOCK, level
        assert level["reserved"] == 0 and level["sold"] == sold[sku], (level, sold[sku])
    lines = Counter(re.sub(r" \(.*\)$", "", line)
                    for line in chaos_shop.lines("notifications")
                    if line.startswith("Received registration event for user"))
    assert all(lines[f"Received registration event for user {u}"] == 1
               for u in result["users"]), lines
    print(f"\nchaos: {len(orders)} orders {dict(statuses)}, kills {dict(kills)}")
