"""Operations must not lie: an offset past the end is refused, a malformed dead letter
is skipped and reported, looking at a bus or database creates nothing, and a delay that
is not a finite number is refused."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tidings import App, ConfigurationError, Headers, TopicPartition, testing
from tidings._records import OutRecord


def tidings(broker: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tidings.cli", "--broker", broker, *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def broker(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/bus.db"


def test_reset_offsets_past_the_end_is_refused_and_lag_is_never_clamped(broker: str) -> None:
    for n in range(2):
        assert tidings(broker, "publish", "orders", json.dumps({"n": n}), "--key", "k"
                       ).returncode == 0
    assert tidings(broker, "reset-offsets", "billing", "orders", "--to", "earliest"
                   ).returncode == 0
    past = tidings(broker, "reset-offsets", "billing", "orders", "--to", "1000")
    assert past.returncode == 1 and "past the end of orders" in past.stderr
    assert "Traceback" not in past.stderr
    groups = json.loads(tidings(broker, "--json", "groups").stdout)
    assert groups[0]["lag"] == {"orders": 2}  # unchanged: nothing was skipped

    async def commit_past_the_end() -> None:  # as a Kafka tool or an older tidings could
        async with App("ops", broker=broker) as app:
            await app.transport.set_offsets("billing", {TopicPartition("orders", p): 10
                                                        for p in range(4)})

    asyncio.run(commit_past_the_end())
    groups = json.loads(tidings(broker, "--json", "groups").stdout)
    assert groups[0]["lag"] == {"orders": 2 - 40}  # shown as it is, not as 0


def dead_letter(broker: str, partition: int, offset: int, attempts: str) -> None:
    # Appended to the transport as the runtime (or another tool) would: publish refuses
    # the reserved tidings-* headers.
    headers = {Headers.DLQ_TOPIC: "payments", Headers.DLQ_PARTITION: str(partition),
               Headers.DLQ_OFFSET: str(offset), Headers.DLQ_GROUP: "billing",
               Headers.DLQ_ERROR_TYPE: "builtins.RuntimeError",
               Headers.DLQ_ERROR_MESSAGE: "declined", Headers.DLQ_ATTEMPTS: attempts,
               Headers.DLQ_FAILED_AT: "1700000000"}

    async def append() -> None:
        async with App("ops", broker=broker) as app:
            await app.transport.append([OutRecord("payments.dlq", b'{"card": "4000"}',
                                                  key="o", headers=headers, partition=0)])

    asyncio.run(append())


def test_a_malformed_dead_letter_is_skipped_and_reported(broker: str) -> None:
    dead_letter(broker, 0, 0, "3")
    dead_letter(broker, 0, 1, "lots")
    listed = tidings(broker, "--json", "dlq", "list", "payments")
    assert listed.returncode == 0, listed.stderr
    assert [e["attempts"] for e in json.loads(listed.stdout)] == [3]
    assert "skipped malformed dead letter payments.dlq" in listed.stderr
    assert "tidings-dlq-attempts='lots' is not an integer" in listed.stderr
    counts = json.loads(tidings(broker, "--json", "dlq", "list").stdout)
    assert counts == [{"topic": "payments", "dlq": "payments.dlq", "pending": 2}]
    shown = tidings(broker, "dlq", "show", "payments", "0:1")
    assert shown.returncode == 1 and "malformed" in shown.stderr
    redriven = tidings(broker, "--json", "dlq", "redrive", "payments")
    assert json.loads(redriven.stdout) == {"redriven": 1}
    assert "skipped malformed" in redriven.stderr
    purged = tidings(broker, "--json", "dlq", "purge", "payments", "--yes")
    assert json.loads(purged.stdout) == {"purged": 1}
    assert "no dead letters" in tidings(broker, "dlq", "list").stdout


def test_inspecting_creates_no_bus_and_no_database(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    for args in (["topics"], ["groups"], ["dlq", "list"], ["dlq", "list", "payments"]):
        out = tidings(f"sqlite:///{missing}/bus.db", *args)
        assert out.returncode == 1 and "no SQLite bus at" in out.stderr, (args, out.stderr)
    db = tmp_path / "orders.db"
    for args in (["list"], ["show", "some-id"]):
        out = tidings(f"sqlite:///{tmp_path}/bus.db", "sagas", "--db", f"sqlite:///{db}", *args)
        assert out.returncode == 1 and "no database at" in out.stderr, out.stderr
    assert not (tmp_path / "no").exists() and sorted(tmp_path.iterdir()) == []


def test_an_existing_bus_is_inspected_read_only(broker: str, tmp_path: Path) -> None:
    assert tidings(broker, "publish", "users", "{}").returncode == 0
    (tmp_path / "bus.db").chmod(0o400)  # opening it read-only needs no write permission
    topics = json.loads(tidings(broker + "?mode=ro", "--json", "topics").stdout)
    assert [t["topic"] for t in topics] == ["users"]

    async def write() -> None:
        async with App("ro", broker=broker + "?mode=ro") as app:
            await app.publish("users", {})

    with pytest.raises(Exception, match="read-only"):
        asyncio.run(write())


@pytest.mark.parametrize("delay", [math.inf, math.nan, -1.0])
def test_a_delay_that_is_not_a_finite_number_is_refused(delay: float) -> None:
    async def main() -> None:
        async with App("delays", broker=testing.memory_url()) as app:
            with pytest.raises(ConfigurationError, match="finite"):
                await app.publish("t", {}, delay=delay)

    asyncio.run(main())


def test_the_cli_refuses_an_infinite_delay(broker: str) -> None:
    for text in ("inf", "nan"):
        out = tidings(broker, "publish", "t", "{}", "--delay", text)
        assert out.returncode == 1 and "finite" in out.stderr, out.stderr
