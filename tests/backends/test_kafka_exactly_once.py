"""Exactly-once consume-transform-produce on Kafka, across a SIGKILL.

A service turns each order into two invoices. It is SIGKILLed in the middle of the
stream, in a handler that has just published (so earlier handlers' invoices are held,
uncommitted), and restarted. A read_committed reader must then see every invoice exactly
once. The same run at-least-once is the control: there the killed handler's invoices
were already durable, so they come twice.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tidings import App

ORDERS = 240
KILL_AT = 150

SERVICE = r'''
import os, signal, sys
from tidings import App, Message

url, source, sink, flag, exactly_once = sys.argv[1:]
app = App("billing", broker=url, shutdown_timeout=5)

@app.subscriber(source, exactly_once=exactly_once == "1", concurrency=4)
async def bill(order: dict, message: Message) -> None:
    await app.publish(sink, {"n": order["n"], "part": 0}, key=message.key)
    await app.publish_many(sink, [{"n": order["n"], "part": 1}])
    if order["n"] == KILL_AT and not os.path.exists(flag):
        open(flag, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)  # published, offset not committed

app.run()
'''.replace("KILL_AT", str(KILL_AT))


def unique(base: str) -> str:
    """A topic name no other test uses."""
    return f"{base}-{uuid.uuid4().hex[:8]}"


def run_service(url: str, source: str, sink: str, flag: Path, exactly_once: bool
                ) -> subprocess.Popen[bytes]:
    """The billing service in its own process."""
    return subprocess.Popen([sys.executable, "-c", SERVICE, url, source, sink, str(flag),
                             "1" if exactly_once else "0"])


@pytest.mark.parametrize("exactly_once", [True, False], ids=["exactly-once", "control"])
def test_each_invoice_once_after_a_sigkill_between_publish_and_commit(
    kafka_url: str, tmp_path: Path, exactly_once: bool,
) -> None:
    source, sink, flag = unique("orders"), unique("invoices"), tmp_path / "killed"
    # A stable transactional id: the restarted instance fences the killed one at once.
    url = f"{kafka_url}&transactional_id=billing-{uuid.uuid4().hex[:6]}"

    async def main() -> Counter[tuple[int, int]]:
        reader = App("auditor", broker=kafka_url)
        seen: Counter[tuple[int, int]] = Counter()

        @reader.subscriber(sink)
        async def audit(invoice: dict) -> None:  # type: ignore[type-arg]
            seen[invoice["n"], invoice["part"]] += 1

        async with reader:
            await reader.publish_many(source, [{"n": n} for n in range(ORDERS)],
                                      key=lambda order: f"customer-{order['n'] % 13}")
            first = run_service(url, source, sink, flag, exactly_once)
            assert await asyncio.to_thread(first.wait, 60) == -9
            second = run_service(url, source, sink, flag, exactly_once)
            try:
                deadline = asyncio.get_running_loop().time() + 40
                while len(seen) < 2 * ORDERS:
                    assert asyncio.get_running_loop().time() < deadline, f"{len(seen)} seen"
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.0)  # duplicates, if any, come now
            finally:
                second.terminate()
                assert await asyncio.to_thread(second.wait, 30) == 0
        return seen

    seen = asyncio.run(main())
    assert set(seen) == {(n, part) for n in range(ORDERS) for part in (0, 1)}
    twice = sorted(key for key, count in seen.items() if count > 1)
    if exactly_once:
        assert not twice, f"seen more than once: {twice}"
    else:  # at-least-once: the killed handler's invoices were durable before its commit
        assert {(KILL_AT, 0), (KILL_AT, 1)} <= set(twice)


def test_a_transaction_stuck_in_librdkafka_is_given_up_and_its_producer_fenced(
    kafka_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """librdkafka's ``send_offsets_to_transaction`` can block for ever, past its timeout,
    once the group coordinator went away (confluentinc/librdkafka#5456, open in 2.16).
    Reproducing it takes a broker restart on which tansu's memory storage also crashes
    librdkafka (a segfault, another bug), so the hang is injected here: the member's
    first transaction never returns. The member must give it up after
    ``2 × request_timeout + 5`` s, start a producer that fences the stuck one, and go on:
    every output once, and the consumer's other work (its polls) never held."""
    from tidings.backends.kafka import _transactional

    real, hung, release = _transactional._transaction, [], threading.Event()

    def first_hangs(producer: Any, *args: Any) -> None:
        if not hung:
            hung.append(producer)
            release.wait(60)  # the call librdkafka never returns from
            raise RuntimeError("released at the end of the test")
        real(producer, *args)

    monkeypatch.setattr(_transactional, "_transaction", first_hangs)
    source, sink = unique("stuck-in"), unique("stuck-out")
    url = f"{kafka_url}&request_timeout=1"  # given up after 7 s

    async def main() -> tuple[Counter[int], float]:
        app = App("stuck", broker=url)
        seen: Counter[int] = Counter()

        @app.subscriber(source, exactly_once=True)
        async def transform(event: dict[str, int]) -> None:
            await app.publish(sink, event, key=str(event["n"]))

        @app.subscriber(sink)
        async def audit(event: dict[str, int]) -> None:
            seen[event["n"]] += 1

        async with app:
            began = time.monotonic()
            await app.publish_many(source, [{"n": n} for n in range(20)])
            while len(seen) < 20:
                assert time.monotonic() - began < 40, f"{len(seen)} of 20 transformed"
                await asyncio.sleep(0.1)
            took = time.monotonic() - began
            await asyncio.sleep(1.0)  # duplicates, if any, come now
        return seen, took

    try:
        with caplog.at_level(logging.WARNING, logger="tidings.kafka"):
            seen, took = asyncio.run(main())
    finally:
        release.set()
    assert len(hung) == 1
    assert seen == Counter(range(20)), seen
    assert took > 7, took  # not before the producer was given up
    assert any("stuck in librdkafka" in r.getMessage() for r in caplog.records)
