"""Hardening of the shop (issue 16): no card number at rest, a token for every user's
data and the admin's for the rest, one origin and trusted hosts only, and the smaller
defects (pagination, inbox pruning, log lines no input can forge)."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reference.client import bearer
from reference.common.service import OneLineFormatter, configure_logging
from reference.common.settings import SERVICES
from shop import Shop, running_shop
from test_flows import APPROVE, DECLINE, final, place

MODES = ["choreography", "orchestration"]
#: Every way a test card number could be written down.
CARDS = [form for number in (APPROVE, DECLINE)
         for form in (number, " ".join(number[i:i + 4] for i in range(0, 16, 4)),
                      "-".join(number[i:i + 4] for i in range(0, 16, 4)))]


@pytest.fixture(scope="module", params=MODES)
def mode_shop(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Shop]:
    """A shop on the embedded bus in each mode."""
    with running_shop(tmp_path_factory.mktemp(f"secure-{request.param}"),
                      request.param) as shop:
        yield shop


def test_no_card_number_at_rest(mode_shop: Shop) -> None:
    """Confirmed and declined orders, paid with cards typed every way: afterwards no file
    of the data directory (databases, their -wal files, the bus) and no service's log
    holds a card number."""
    shop = mode_shop
    user = shop.register("Carla Card")
    outcomes = []
    for number in CARDS:
        order_id = place(shop, user, [("TEA-001", 1)], number)
        outcomes.append(final(shop, user, order_id)["status"])
    assert outcomes == ["CONFIRMED"] * 3 + ["CANCELLED"] * 3
    time.sleep(1.0)  # the last replies and outbox deletes reach the disk
    files = [p for p in shop.settings.data_dir.rglob("*") if p.is_file()]
    assert any(p.name == "bus.db-wal" for p in files) or any(p.name == "bus.db" for p in files)
    for path in [*files, shop.log]:
        data = path.read_bytes()
        found = [number for number in CARDS if number.encode() in data]
        assert not found, f"{path} holds {found}"


def _get(shop: Shop, service: str, path: str, token: str | None = None) -> Any:
    headers = bearer(token) if token else None
    return shop.http.get(shop.url(service, path), headers=headers)


def test_a_user_sees_only_their_own_data(sqlite_shop: Shop) -> None:
    shop = sqlite_shop
    ann, ben = shop.register("Ann"), shop.register("Ben")
    order_id = place(shop, ann, [("TEA-001", 1)])
    assert final(shop, ann, order_id)["status"] == "CONFIRMED"
    mine = {"users": f"/users/{ann['id']}", "orders": f"/orders/{order_id}",
            "payments": f"/payments/{order_id}"}
    for service, path in [*mine.items(), ("orders", f"/orders/{order_id}/history"),
                          ("orders", f"/orders?user_id={ann['id']}")]:
        assert _get(shop, service, path, ann["token"]).status_code == 200, path
        anonymous = _get(shop, service, path)
        assert anonymous.status_code == 401, path
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        assert _get(shop, service, path, "u1.forged").status_code == 401, path
        assert _get(shop, service, path, ben["token"]).status_code in (403, 404), path
    assert _get(shop, "orders", "/orders", ben["token"]).json() == []
    body = {"user_id": ann["id"], "card_token": shop.card_token(ann),
            "items": [{"sku": "TEA-001", "qty": 1}]}
    url = shop.url("orders", "/orders")
    assert shop.http.post(url, json=body).status_code == 401
    assert shop.http.post(url, json=body, headers=bearer(ben["token"])).status_code == 403
    stolen = {**body, "user_id": ben["id"]}  # Ann's card token is no good to Ben
    assert shop.http.post(url, json=stolen, headers=bearer(ben["token"])).status_code == 422
    vault = shop.url("payments", "/vault")
    assert shop.http.post(vault, json={"card_number": APPROVE}).status_code == 401


def test_admin_endpoints_want_the_admin_token(sqlite_shop: Shop) -> None:
    shop = sqlite_shop
    user = shop.register("Mallory")
    url = shop.url("inventory", "/stock/PEN-004")
    for headers in (None, bearer(user["token"]), bearer("not-the-token")):
        response = shop.http.put(url, json={"available": 0}, headers=headers)
        assert response.status_code == 401 and response.json()["detail"]
        assert _get(shop, "orders", "/fraud-rules", (headers or {}).get(
            "authorization", " ").split(" ")[1]).status_code == 401
    assert shop.http.put(url, json={"available": 5}, headers=shop.admin).status_code == 200
    assert shop.http.get(url).json()["available"] == 5  # stock levels stay public
    for service in SERVICES:  # operations stay open (on loopback)
        for path in ("/health", "/ready", "/metrics"):
            if service in ("frontend", "console") and path != "/health":
                continue
            assert shop.http.get(shop.url(service, path)).status_code == 200, (service, path)


def test_only_the_page_may_call_across_origins(sqlite_shop: Shop) -> None:
    shop = sqlite_shop
    page = shop.url("frontend").replace("127.0.0.1", "localhost")
    for origin, allowed in ((shop.url("frontend"), True), (page, True),
                            ("http://evil.example", False), ("null", False)):
        response = shop.http.options(shop.url("orders", "/orders"), headers={
            "origin": origin, "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type"})
        assert (response.headers.get("access-control-allow-origin") == origin) is allowed, \
            (origin, response.headers)
        assert response.headers.get("access-control-allow-origin") != "*"


def test_only_trusted_host_names_are_served(sqlite_shop: Shop) -> None:
    """A page of another site that rebinds its name to 127.0.0.1 gets nothing."""
    shop = sqlite_shop
    for service in ("users", "frontend", "inventory"):
        evil = shop.http.get(shop.url(service, "/health"), headers={"host": "evil.example"})
        assert evil.status_code == 400, evil.text
        local = shop.http.get(shop.url(service, "/health"), headers={
            "host": f"localhost:{shop.settings.port(service)}"})
        assert local.status_code == 200


def test_the_page_has_security_headers(sqlite_shop: Shop) -> None:
    page = sqlite_shop.http.get(sqlite_shop.url("frontend", "/"))
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert "<script>" not in page.text and "<style>" not in page.text  # no inline code
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in csp
    assert sqlite_shop.url("orders") in csp  # where the page may connect
    script = sqlite_shop.http.get(sqlite_shop.url("frontend", "/shop.js"))
    assert script.status_code == 200 and "sessionStorage" in script.text
    assert "localStorage" not in script.text


def test_orders_come_in_pages(sqlite_shop: Shop) -> None:
    shop = sqlite_shop
    user = shop.register("Paige")
    placed = [place(shop, user, [("PEN-004", 1)]) for _ in range(5)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = shop.http.get(shop.url("orders", "/orders"), params=params,
                                 headers=bearer(user["token"]))
        assert response.status_code == 200, response.text
        assert len(response.json()) <= 2
        seen += [o["order_id"] for o in response.json()]
        pages += 1
        cursor = response.headers.get("x-next-cursor")
        if cursor is None:
            break
    assert pages == 3
    assert seen == placed[::-1]  # newest first, each once
    too_many = shop.http.get(shop.url("orders", "/orders"), params={"limit": 101},
                             headers=bearer(user["token"]))
    assert too_many.status_code == 422


def test_inboxes_are_pruned(tmp_path: Path) -> None:
    """With a retention of a second and a prune every two seconds, the notifications
    inbox forgets the registration it handled."""
    env = {"REFERENCE_INBOX_RETENTION": "1", "REFERENCE_INBOX_PRUNE_CRON": "*/2 * * * * *"}
    with running_shop(tmp_path, env=env) as shop:
        user = shop.register("Ivy Inbox")
        shop.wait_for_line("notifications",
                           f"Received registration event for user {user['id']} (Ivy Inbox)")
        db = shop.settings.database("notifications")
        deadline = time.monotonic() + 20
        while True:
            with sqlite3.connect(db) as conn:
                rows = conn.execute("SELECT count(*) FROM tidings_inbox WHERE consumer = "
                                    "'notifications'").fetchone()[0]
            if rows == 0:
                break
            assert time.monotonic() < deadline, f"{rows} inbox rows never pruned"
            time.sleep(0.5)
        assert any("pruned" in line and "inbox rows" in line
                   for line in shop.lines("notifications"))


def test_a_log_line_is_one_line_whatever_the_input() -> None:
    """A name from the bus (not only from the users API, which refuses control
    characters) cannot start a log line that seems to come from the supervisor."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging()
        handler = root.handlers[0]
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert isinstance(handler.formatter, OneLineFormatter)
    record = logging.LogRecord("reference.notifications", logging.INFO, __file__, 1,
                               "Received registration event for user %s (%s)",
                               (7, "Eve\nsupervisor    | all services stopped\x1b[2J"), None)
    line = handler.format(record)
    assert "\n" not in line and "\x1b" not in line
    assert line == ("Received registration event for user 7 (Eve\\nsupervisor    | all "
                    "services stopped\\x1b[2J)")
