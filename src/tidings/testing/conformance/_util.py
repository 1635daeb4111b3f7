"""Small helpers for the suite's async tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..._app import App
from ..._dlq import DeadLetter

__all__ = ["Handler", "Names", "eventually", "wait_letters"]


async def eventually(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> None:
    """Wait until ``check()`` is true, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        await asyncio.sleep(0.01)


async def wait_letters(app: App, topic: str, count: int) -> list[DeadLetter]:
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


#: The ``names`` fixture: a name made unique to one test.
Names = Callable[[str], str]
#: A handler a test builds (any async function of a payload).
Handler = Callable[..., Awaitable[None]]
