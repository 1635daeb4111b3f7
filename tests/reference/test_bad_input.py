"""Bad input gets a 4xx with a JSON reason, never a 5xx; a fuzzer over every service's
OpenAPI document finds no 5xx either. Every request here carries a valid token (user 1's,
or the admin token where an admin is asked for), so only the field under test is wrong."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reference.client import bearer
from shop import Shop

#: A well-formed card token of nobody's: its signature is not the shop's.
FORGED = "card_0123456789abcdef_4242." + "A" * 43
GOOD_ORDER: dict[str, Any] = {"user_id": 1, "items": [{"sku": "TEA-001", "qty": 1}],
                              "card_token": "set by bad_shop"}
GOOD_USER = {"username": "Eve", "age": 40, "address": "Shanghai"}
HUGE = "x" * (1024 * 1024 + 10)


def order(**changes: Any) -> dict[str, Any]:
    return {**GOOD_ORDER, **changes}


def user(**changes: Any) -> dict[str, Any]:
    return {**GOOD_USER, **changes}


def without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


@pytest.fixture(scope="module")
def bad_shop(sqlite_shop: Shop) -> Shop:
    """The shop with user 1 registered and holding a card token (so only the field under
    test is wrong); its requests carry user 1's token."""
    user = sqlite_shop.register(**GOOD_USER)
    assert user["id"] == 1
    GOOD_ORDER["card_token"] = sqlite_shop.card_token(user)
    sqlite_shop.http.headers.update(bearer(user["token"]))
    good = sqlite_shop.http.post(sqlite_shop.url("orders", "/orders"), json=GOOD_ORDER)
    assert good.status_code == 202, good.text
    return sqlite_shop


def card(number: Any) -> dict[str, Any]:
    return {"card_number": number}


BAD_POSTS = [
    ("users", "/register", without(GOOD_USER, "username")),
    ("users", "/register", without(GOOD_USER, "age")),
    ("users", "/register", user(age="25")),
    ("users", "/register", user(age=-1)),
    ("users", "/register", user(age=25.5)),
    ("users", "/register", user(username="")),
    ("users", "/register", user(username=None)),
    ("users", "/register", user(address=["Beijing"])),
    ("users", "/register", [GOOD_USER]),
    ("orders", "/orders", without(GOOD_ORDER, "items")),
    ("orders", "/orders", without(GOOD_ORDER, "card_token")),
    ("orders", "/orders", order(user_id="1")),
    ("orders", "/orders", order(items=[])),
    ("orders", "/orders", order(items=[{"sku": "TEA-001", "qty": 0}])),
    ("orders", "/orders", order(items=[{"sku": "TEA-001", "qty": -3}])),
    ("orders", "/orders", order(items=[{"sku": "TEA-001", "qty": "2"}])),
    ("orders", "/orders", order(items=[{"sku": "TEA-001"}])),
    ("orders", "/orders", order(items=[{"sku": "NOPE-999", "qty": 1}])),
    ("orders", "/orders", order(user_id=424242)),  # another user's: 403
    ("orders", "/orders", order(user_id=0)),
    ("orders", "/orders", order(card_token=FORGED)),
    ("orders", "/orders", order(card_token="4242424242424242")),
    ("orders", "/orders", order(card_number="4242424242424242")),  # numbers go to the vault
    ("payments", "/vault", card("1234")),
    ("payments", "/vault", card("4242424242424241")),
    ("payments", "/vault", card("4242/4242/4242/4242")),  # (dashes are fine)
    ("payments", "/vault", card(4242424242424242)),
    ("payments", "/vault", {}),
    ("users", "/register", user(username=HUGE)),
    ("users", "/register", user(username="Eve\nsupervisor    | all services stopped")),
    ("users", "/register", user(address="Shanghai\x1b[2J")),
    ("payments", "/vault", card(HUGE)),
]


@pytest.mark.parametrize(("service", "path", "body"), BAD_POSTS,
                         ids=[f"{s}{p}-{i}" for i, (s, p, _) in enumerate(BAD_POSTS)])
def test_bad_post_is_a_4xx_with_a_reason(bad_shop: Shop, service: str, path: str,
                                         body: Any) -> None:
    response = bad_shop.http.post(bad_shop.url(service, path), json=body)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.json()["detail"]


BAD_REQUESTS = [
    ("GET", "users", "/users/abc", None),
    ("GET", "users", "/users/99999", None),
    ("GET", "users", "/users/99999999999999999999999", None),
    ("GET", "users", "/users/-1", None),
    ("GET", "orders", "/orders/no-such-order", None),
    ("GET", "orders", "/orders?user_id=abc", None),
    ("GET", "orders", "/orders?user_id=-5", None),
    ("GET", "orders", "/orders?user_id=2", None),
    ("GET", "orders", "/orders?limit=0", None),
    ("GET", "orders", "/orders?limit=101", None),
    ("GET", "orders", "/orders?limit=10000000000000000000000", None),
    ("GET", "orders", "/orders?cursor=abc", None),
    ("GET", "orders", "/orders?cursor=99999999999999999999999_x", None),
    ("GET", "inventory", "/stock/NOPE-999", None),
    ("PUT", "inventory", "/stock/NOPE-999", {"available": 5}),
    ("PUT", "inventory", "/stock/TEA-001", {"available": -1}),
    ("PUT", "inventory", "/stock/TEA-001", {"available": "many"}),
    ("PUT", "inventory", "/stock/TEA-001", {}),
    ("GET", "payments", "/payments/no-such-order", None),
]


@pytest.mark.parametrize(("method", "service", "path", "body"), BAD_REQUESTS,
                         ids=[f"{m}-{s}{p}" for m, s, p, _ in BAD_REQUESTS])
def test_bad_request_is_a_4xx_with_a_reason(bad_shop: Shop, method: str, service: str,
                                            path: str, body: Any) -> None:
    headers = bad_shop.admin if method == "PUT" else None
    response = bad_shop.http.request(method, bad_shop.url(service, path), json=body,
                                     headers=headers)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.json()["detail"]


def test_not_json_is_a_4xx(bad_shop: Shop) -> None:
    response = bad_shop.http.post(bad_shop.url("users", "/register"), content=b"{not json",
                                  headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"]


@pytest.mark.parametrize("service", ["users", "orders", "inventory", "payments"])
def test_body_over_1_mb_is_refused(bad_shop: Shop, service: str) -> None:
    path = {"users": "/register", "orders": "/orders"}.get(service, "/health")
    response = bad_shop.http.post(bad_shop.url(service, path), content=b"x" * (1024 * 1024 + 1),
                                  headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["detail"]


def test_streamed_body_over_1_mb_is_refused(bad_shop: Shop) -> None:
    def chunks() -> Iterator[bytes]:  # no content-length: chunked transfer encoding
        for _ in range(20):
            yield b"x" * 65536

    response = bad_shop.http.post(bad_shop.url("users", "/register"), content=chunks(),
                                  headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["detail"]


@pytest.mark.parametrize("service", ["users", "orders", "inventory", "payments",
                                     "notifications", "frontend"])
def test_fuzzing_the_openapi_finds_no_5xx(bad_shop: Shop, service: str, tmp_path: Path
                                          ) -> None:
    """schemathesis generates requests from the service's OpenAPI document."""
    token = bad_shop.http.headers["authorization"]  # user 1's
    if service in ("inventory", "notifications"):  # their writes and counts are admin's
        token = bad_shop.admin["authorization"]
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", bad_shop.url(service, "/openapi.json"),
         "--header", f"Authorization: {token}",
         "--checks", "not_a_server_error", "--max-examples", "40", "--seed", "1",
         "--request-timeout", "10", "--suppress-health-check", "all",
         "--generation-database", ":memory:"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,  # it keeps state in cwd
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


@pytest.mark.parametrize(("card", "status"), [
    ("4242 4242 4242 4242", 201),
    ("4242-4242-4242-4242", 201),
    (" 4242 4242-4242 4242 ", 201),
    ("4242 4242 4242 4241", 422),  # the Luhn check still applies
    ("4242.4242.4242.4242", 422),
])
def test_card_numbers_may_be_typed_in_groups(bad_shop: Shop, card: str, status: int) -> None:
    response = bad_shop.http.post(bad_shop.url("payments", "/vault"),
                                  json={"card_number": card})
    assert response.status_code == status, response.text
    if status == 422:
        assert response.json() == {"detail": "invalid card number"}
    else:
        assert response.json()["last4"] == "4242"
