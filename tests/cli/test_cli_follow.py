"""The CLI does what it says: tail stops at --limit and follows one key, dlq list finds
every dead-letter topic, tables stay one line a row, sagas takes plain database URLs,
and an unreachable Kafka is one line, not a screenful of driver logs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from tidings import App, RetryPolicy
from tidings.cli._sagas import async_url
from tidings.sqlalchemy import create_tables


def tidings(broker: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tidings.cli", "--broker", broker, *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def broker(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/bus.db"


async def _publish_orders(broker: str) -> None:
    async with App("orders", broker=broker) as app:
        for n in range(1, 8):
            await app.publish("orders", {"order": f"o{n % 3}", "n": n}, key=f"o{n % 3}")


def test_tail_stops_at_limit_and_follows_one_key(broker: str) -> None:
    asyncio.run(_publish_orders(broker))
    limited = tidings(broker, "tail", "orders", "--from", "earliest", "--limit", "2")
    assert limited.returncode == 0, limited.stderr
    assert len(limited.stdout.splitlines()) == 2, limited.stdout
    keyed = tidings(broker, "--json", "tail", "orders", "--from", "earliest", "--key", "o1",
                    "--timeout", "1")
    assert sorted(json.loads(line)["value"]["n"] for line in keyed.stdout.splitlines()) == \
        [1, 4, 7]
    # --grep matches the value as printed (JSON with spaces), and counts toward --limit.
    grepped = tidings(broker, "--json", "tail", "orders", "--from", "earliest",
                      "--grep", r'"n": [67]\b', "--limit", "2")
    assert sorted(json.loads(line)["value"]["n"] for line in grepped.stdout.splitlines()) == \
        [6, 7]
    bad = tidings(broker, "tail", "orders", "--grep", "[")
    assert bad.returncode == 2 and "not a regular expression" in bad.stderr


def test_tail_with_a_group_commits_only_what_it_printed(broker: str) -> None:
    asyncio.run(_publish_orders(broker))
    out = tidings(broker, "tail", "orders", "--group", "ops", "--from", "earliest",
                  "--limit", "3")
    assert len(out.stdout.splitlines()) == 3, out.stdout
    groups = json.loads(tidings(broker, "--json", "groups").stdout)
    assert next(g for g in groups if g["group"] == "ops")["lag"] == {"orders": 4}


def _dead_letter(broker: str, topics: dict[str, int]) -> None:
    async def fail() -> None:
        app = App("billing", broker=broker)

        async def refuse(payload: dict) -> None:
            raise RuntimeError(f"declined:\n  card {payload['card']}\n  try another")

        for topic in topics:
            app.subscriber(topic, retry=RetryPolicy.never())(refuse)
        async with app:
            for topic, count in topics.items():
                for n in range(count):
                    await app.publish(topic, {"card": f"400{n}"})
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                with contextlib.suppress(LookupError):  # until the .dlq topics exist
                    found = [len(await app.dead_letters(t).pending()) for t in topics]
                    if found == list(topics.values()):
                        return
                await asyncio.sleep(0.02)
        raise AssertionError("no dead letters")

    asyncio.run(fail())


def test_dlq_list_without_a_topic_lists_every_dead_letter_topic(broker: str) -> None:
    assert tidings(broker, "publish", "orders", "{}").returncode == 0  # a bus, no failures
    empty = tidings(broker, "dlq", "list")
    assert empty.returncode == 0 and empty.stdout.strip() == "no dead letters", empty
    _dead_letter(broker, {"payments": 2, "emails": 1})
    listed = tidings(broker, "--json", "dlq", "list")
    assert json.loads(listed.stdout) == [
        {"topic": "emails", "dlq": "emails.dlq", "pending": 1},
        {"topic": "payments", "dlq": "payments.dlq", "pending": 2},
    ]
    table = tidings(broker, "dlq", "list").stdout.splitlines()
    assert table[0].split() == ["TOPIC", "DEAD-LETTER", "TOPIC", "PENDING"]
    assert table[2].split() == ["emails", "emails.dlq", "1"]


def test_multi_line_errors_stay_on_one_table_line(broker: str) -> None:
    _dead_letter(broker, {"payments": 2})
    table = tidings(broker, "dlq", "list", "payments").stdout.splitlines()
    assert len(table) == 4, table  # header, rule, one line per dead letter
    assert "declined: card 4000 try another" in "\n".join(table) or \
        "declined: card 4001 try another" in "\n".join(table)
    full = json.loads(tidings(broker, "--json", "dlq", "list", "payments").stdout)
    assert full[0]["error_message"].startswith("declined:\n  card")


@pytest.mark.parametrize(("url", "expected"), [
    ("sqlite:///orders.db", "sqlite+aiosqlite:///orders.db"),
    ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
    ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
    ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
])
def test_plain_database_urls_get_the_async_driver(url: str, expected: str) -> None:
    assert async_url(url) == expected


def test_sagas_takes_a_plain_sqlite_url(tmp_path: Path, broker: str) -> None:
    async def make() -> None:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/orders.db")
        await create_tables(engine)
        await engine.dispose()

    asyncio.run(make())
    out = tidings(broker, "sagas", "--db", f"sqlite:///{tmp_path}/orders.db", "list")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "no sagas"


def test_unreachable_kafka_is_one_line_not_driver_logs() -> None:
    out = tidings("kafka://127.0.0.1:1?request_timeout=2", "topics")
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("Error: cannot reach Kafka at 127.0.0.1:1")
