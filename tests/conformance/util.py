"""Small helpers for async tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Wait until ``check()`` is true, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        await asyncio.sleep(0.01)


async def wait_letters(app, topic: str, count: int) -> list:
    """The pending dead letters of ``topic`` once there are ``count`` (10 s at most)."""
    for _ in range(500):
        try:
            letters = await app.dead_letters(topic).pending()
        except LookupError:
            letters = []
        if len(letters) >= count:
            return letters
        await asyncio.sleep(0.02)
    raise AssertionError(f"expected {count} dead letters")
