"""The console's lookup indexes cost every append, so a bus has none until a lookup
needs them: the first lookup builds them, and finds the conversation."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from tidings import App


def _indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'log_by_%'")}


def test_a_bus_is_indexed_for_lookups_only_once_looked_up(tmp_path: Path) -> None:
    path = tmp_path / "bus.db"

    async def main() -> list[str]:
        async with App("svc", broker=f"sqlite:///{path}") as app:
            published = await app.publish("orders", {"n": 1}, key="o-1")
            assert _indexes(path) == set()
            found = await app.transport.lookup(published.id)  # type: ignore[attr-defined]
            return [r.headers["tidings-id"] for r in found]

    assert asyncio.run(main())
    assert _indexes(path) == {"log_by_key", "log_by_id", "log_by_conversation"}
