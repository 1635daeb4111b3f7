"""A small HTTP client of the shop, for the scripted demo, the tests and the benchmark.

A user is the dict ``POST /register`` answers (``id``, ``token``, ...); calls made for a
user send their token, and restocking sends the settings' admin token. A card number is
tokenized once per user with the payments service's ``POST /vault``, as the page does.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from .common.settings import Settings

__all__ = ["APPROVE", "DECLINE", "ShopClient", "bearer"]

APPROVE = "4242424242424242"
DECLINE = "4000000000000002"
FINAL = ("CONFIRMED", "CANCELLED")


def bearer(token: str) -> dict[str, str]:
    """The ``Authorization`` header presenting ``token``."""
    return {"authorization": f"Bearer {token}"}


class ShopClient:
    """Talks to each service's API as a browser (or a script) would."""

    def __init__(self, settings: Settings, timeout: float = 10.0) -> None:
        self.settings = settings
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        self.http = httpx.AsyncClient(timeout=timeout, limits=limits)
        self.admin = bearer(settings.admin_token.get_secret_value())
        self._cards: dict[tuple[int, str], str] = {}

    async def __aenter__(self) -> ShopClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    def url(self, service: str, path: str) -> str:
        """The URL of ``path`` on ``service``."""
        return f"{self.settings.url(service)}{path}"

    async def register(self, username: str, age: int = 30, address: str = "Beijing"
                       ) -> dict[str, Any]:
        """``POST /register``; the new user."""
        body = {"username": username, "age": age, "address": address}
        response = await self.http.post(self.url("users", "/register"), json=body)
        response.raise_for_status()
        user: dict[str, Any] = response.json()
        return user

    async def card_token(self, user: dict[str, Any], card: str = APPROVE) -> str:
        """The token of ``card`` for ``user`` (``POST /vault``, once per user and card)."""
        known = self._cards.get((user["id"], card))
        if known is None:
            response = await self.http.post(self.url("payments", "/vault"),
                                            json={"card_number": card},
                                            headers=bearer(user["token"]))
            response.raise_for_status()
            known = self._cards[user["id"], card] = str(response.json()["card_token"])
        return known

    async def order(self, user: dict[str, Any], items: list[tuple[str, int]],
                    card: str = APPROVE) -> str:
        """``POST /orders`` as ``user``, paying with ``card``; the new order's id."""
        body = {"user_id": user["id"], "card_token": await self.card_token(user, card),
                "items": [{"sku": sku, "qty": qty} for sku, qty in items]}
        response = await self.http.post(self.url("orders", "/orders"), json=body,
                                        headers=bearer(user["token"]))
        response.raise_for_status()
        order_id: str = response.json()["order_id"]
        return order_id

    async def get(self, service: str, path: str, token: str | None = None) -> Any:
        """GET a JSON document (as the user whose ``token`` is given)."""
        headers = bearer(token) if token else None
        response = await self.http.get(self.url(service, path), headers=headers)
        response.raise_for_status()
        return response.json()

    async def wait_final(self, user: dict[str, Any], order_id: str, timeout: float = 30.0,
                         interval: float = 0.05) -> dict[str, Any]:
        """Poll ``user``'s order until it is CONFIRMED or CANCELLED."""
        deadline = time.monotonic() + timeout
        while True:
            with_retry = await self._try_get("orders", f"/orders/{order_id}", user["token"])
            if with_retry is not None and with_retry["status"] in FINAL:
                return dict(with_retry)
            if time.monotonic() > deadline:
                raise TimeoutError(f"order {order_id} not final after {timeout} s: {with_retry}")
            await asyncio.sleep(interval)

    async def _try_get(self, service: str, path: str, token: str) -> Any:
        # A service may be restarting (chaos): treat a failed call as "not yet".
        try:
            return await self.get(service, path, token)
        except httpx.HTTPError:
            return None

    async def stock(self, sku: str) -> dict[str, Any]:
        """``GET /stock/{sku}``."""
        result: dict[str, Any] = await self.get("inventory", f"/stock/{sku}")
        return result

    async def set_stock(self, sku: str, available: int) -> None:
        """``PUT /stock/{sku}`` (with the admin token)."""
        response = await self.http.put(self.url("inventory", f"/stock/{sku}"),
                                       json={"available": available}, headers=self.admin)
        response.raise_for_status()

    async def payment(self, user: dict[str, Any], order_id: str) -> dict[str, Any] | None:
        """``GET /payments/{order_id}`` as ``user``, or None if the order was never
        charged."""
        response = await self.http.get(self.url("payments", f"/payments/{order_id}"),
                                       headers=bearer(user["token"]))
        if response.status_code == 404:
            return None
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result
