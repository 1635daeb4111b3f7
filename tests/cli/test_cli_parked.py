"""``tidings dlq parked``: the keys parked behind a dead letter or a non-blocking retry,
with counts, shown to an operator (and re-drive releasing them)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tidings import App, Message, RetryPolicy
from tidings._parklog import parked_keys
from tidings.testing.conformance import wait_letters


def tidings(broker: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tidings.cli", "--broker", broker, *args],
                          capture_output=True, text=True, timeout=60)


def test_dlq_parked_lists_parked_keys_with_counts(tmp_path: Path) -> None:
    broker = f"sqlite:///{tmp_path}/bus.db"

    async def park() -> None:
        app = App("billing", broker=broker)

        @app.subscriber("payments", retry=RetryPolicy.never(), dead_letter="park-key",
                        partitions=1)
        async def charge(payload: dict[str, Any]) -> None:
            if payload["n"] == 0:
                raise RuntimeError("declined")

        slow = App("audit", broker=broker)

        @slow.subscriber("payments", retry=RetryPolicy(backoff=600, max_backoff=600, jitter=0,
                                                    blocking=False))
        async def audit(payload: dict[str, Any], message: Message) -> None:
            raise ConnectionError("audit store down")

        async with app, slow:
            for n in range(3):
                await app.publish("payments", {"n": n}, key="order-1")
            await wait_letters(app, "payments", 1)
            # audit: the key parked behind its first message's retry, in 600 s
            for _ in range(600):
                if sum(k.count for k in await parked_keys(app.transport)) == 6:
                    break
                await asyncio.sleep(0.05)

    asyncio.run(park())
    listed = json.loads(tidings(broker, "--json", "dlq", "parked").stdout)
    billing = [k for k in listed if k["group"] == "billing"]
    assert [(k["topic"], k["key"], k["parked"]) for k in billing] == [("payments", "order-1", 3)]
    assert "dead letter" in billing[0]["waits_for"]
    audit = [k for k in listed if k["group"] == "audit"]
    assert sorted(k["parked"] for k in audit) == [3]
    assert audit[0]["waits_for"].startswith("attempt 2 at ")
    text = tidings(broker, "dlq", "parked", "billing").stdout
    assert "order-1" in text and "audit" not in text
    assert "no parked keys" in tidings(broker, "dlq", "parked", "nobody").stdout

