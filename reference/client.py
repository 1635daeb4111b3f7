"""A small HTTP client of the shop, for the scripted demo, the tests and the benchmark."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from .common.settings import Settings

__all__ = ["APPROVE", "DECLINE", "ShopClient"]

APPROVE = "4242424242424242"
DECLINE = "4000000000000002"
FINAL = ("CONFIRMED", "CANCELLED")


class ShopClient:
    """Talks to each service's API as a browser (or a script) would."""

    def __init__(self, settings: Settings, timeout: float = 10.0) -> None:
        self.settings = settings
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        self.http = httpx.AsyncClient(timeout=timeout, limits=limits)

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

    async def order(self, user_id: int, items: list[tuple[str, int]], card: str = APPROVE
                    ) -> str:
        """``POST /orders``; the new order's id."""
        body = {"user_id": user_id, "card_number": card,
                "items": [{"sku": sku, "qty": qty} for sku, qty in items]}
        response = await self.http.post(self.url("orders", "/orders"), json=body)
        response.raise_for_status()
        order_id: str = response.json()["order_id"]
        return order_id

    async def get(self, service: str, path: str) -> Any:
        """GET a JSON document."""
        response = await self.http.get(self.url(service, path))
        response.raise_for_status()
        return response.json()

    async def wait_final(self, order_id: str, timeout: float = 30.0,
                         interval: float = 0.05) -> dict[str, Any]:
        """Poll the order until it is CONFIRMED or CANCELLED."""
        deadline = time.monotonic() + timeout
        while True:
            with_retry = await self._try_get("orders", f"/orders/{order_id}")
            if with_retry is not None and with_retry["status"] in FINAL:
                return dict(with_retry)
            if time.monotonic() > deadline:
                raise TimeoutError(f"order {order_id} not final after {timeout} s: {with_retry}")
            await asyncio.sleep(interval)

    async def _try_get(self, service: str, path: str) -> Any:
        # A service may be restarting (chaos): treat a failed call as "not yet".
        try:
            return await self.get(service, path)
        except httpx.HTTPError:
            return None

    async def stock(self, sku: str) -> dict[str, Any]:
        """``GET /stock/{sku}``."""
        result: dict[str, Any] = await self.get("inventory", f"/stock/{sku}")
        return result

    async def set_stock(self, sku: str, available: int) -> None:
        """``PUT /stock/{sku}``."""
        response = await self.http.put(self.url("inventory", f"/stock/{sku}"),
                                       json={"available": available})
        response.raise_for_status()

    async def payment(self, order_id: str) -> dict[str, Any] | None:
        """``GET /payments/{order_id}``, or None if the order was never charged."""
        response = await self.http.get(self.url("payments", f"/payments/{order_id}"))
        if response.status_code == 404:
            return None
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result
