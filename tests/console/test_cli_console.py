"""``tidings console`` and ``tidings asyncapi`` run as a user runs them: separate
processes, a real SQLite bus, real HTTP (the console's event stream), bad input."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema_rs
import pytest

from tidings import App

HERE = Path(__file__).resolve().parent
SCHEMA = HERE / "asyncapi-3.0.0.schema.json"  # the official schema, from asyncapi/spec-json-schemas


def tidings(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(HERE), **(env or {})}
    return subprocess.run([sys.executable, "-m", "tidings.cli", *args], capture_output=True,
                          text=True, timeout=60, env=environ, cwd=HERE)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def console_of(tmp_path: Path) -> Iterator[object]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(broker: str, *args: str) -> str:
        port = free_port()
        with (tmp_path / f"console-{port}.log").open("wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "tidings.cli", "console",
                                        "--broker", broker, "--port", str(port), *args],
                                       stdout=log, stderr=subprocess.STDOUT)
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/api/settings", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError((tmp_path / f"console-{port}.log").read_text())

    yield start
    for process in processes:
        process.send_signal(signal.SIGINT)
        process.wait(10)


def test_console_serves_live_snapshots_over_sse(tmp_path: Path, console_of) -> None:  # type: ignore[no-untyped-def]
    broker = f"sqlite:///{tmp_path}/bus.db"

    async def publish(n: int) -> None:
        async with App("writer", broker=broker) as app:
            for i in range(n):
                await app.publish("orders", {"n": i})

    asyncio.run(publish(1))
    url = console_of(broker)
    seen = []
    with httpx.stream("GET", f"{url}/api/events", timeout=10) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                topics = json.loads(line.removeprefix("data: "))["topics"]
                seen.append(next(t["messages"] for t in topics if t["name"] == "orders"))
                if len(seen) == 1:
                    asyncio.run(publish(2))
                if seen[-1] == 3:
                    break
    assert seen[0] == 1 and seen[-1] == 3
    forged = httpx.post(f"{url}/api/dead-letters/orders/purge")  # as a foreign page could
    assert forged.status_code == 403 and "X-Tidings-Console" in forged.json()["error"]
    refused = httpx.post(f"{url}/api/dead-letters/orders/purge",
                         headers={"X-Tidings-Console": "1"})
    assert refused.status_code == 403 and "--allow-actions" in refused.json()["error"]


def test_missing_bus_or_database_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "bus.db"
    out = tidings("console", "--broker", f"sqlite:///{missing}", "--port", str(free_port()))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == \
        f"Error: no bus database at {missing} (nothing was created)"
    assert "Traceback" not in out.stderr and not missing.parent.exists()
    bus = tmp_path / "bus.db"
    asyncio.run(_touch_bus(f"sqlite:///{bus}"))
    db = tmp_path / "sagas.db"
    out = tidings("console", "--broker", f"sqlite:///{bus}", "--db",
                  f"sqlite+aiosqlite:///{db}", "--port", str(free_port()))
    assert out.returncode == 1 and "no saga database at" in out.stderr
    assert "Traceback" not in out.stderr and not db.exists()
    out = tidings("console", "--broker", "kafka://user:hunter2@127.0.0.1:1", "--port",
                  str(free_port()))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "hunter2" not in out.stderr


async def _touch_bus(broker: str) -> None:
    async with App("writer", broker=broker) as app:
        await app.publish("t", {})


def test_asyncapi_document_validates_against_the_official_schema() -> None:
    out = tidings("asyncapi", "asyncapi_app:app")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    validator = jsonschema_rs.Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = [str(e) for e in validator.iter_errors(doc)]
    assert errors == []
    assert doc["asyncapi"] == "3.0.0" and doc["info"]["title"] == "orders"
    assert set(doc["channels"]["orders"]["messages"]) == {"OrderCreated", "OrderCancelled"}
    assert {"orders", "quote", "confirmations", "emails.p0", "emails.p9"} <= set(doc["channels"])
    ops = doc["operations"]
    assert ops["orders.subscriber.orders"]["action"] == "receive"
    assert ops["orders.subscriber.orders"]["x-tidings-group"] == "orders"
    assert ops["orders.send.confirmations.Confirmation"]["action"] == "send"
    schemas = doc["components"]["schemas"]
    assert schemas["OrderCreated"]["required"] == ["order_id", "items", "total_cents"]
    assert "Line" in schemas


@pytest.mark.parametrize(("variant", "expected"), [
    ("required-added", "topic orders: OrderCreated: required field 'currency' added"),
    ("type-changed", "topic orders: OrderCreated: field 'total_cents' changed type "
                     "from integer to string"),
    ("topic-removed", "topic confirmations: removed"),
])
def test_check_lists_breaking_changes(tmp_path: Path, variant: str, expected: str) -> None:
    previous = tmp_path / "v1.json"
    previous.write_text(tidings("asyncapi", "asyncapi_app:app").stdout)
    out = tidings("asyncapi", "asyncapi_app:app", "--check", str(previous),
                  env={"ASYNCAPI_VARIANT": variant})
    assert out.returncode == 1, out.stdout + out.stderr
    assert expected in out.stdout


def test_check_accepts_a_compatible_change(tmp_path: Path) -> None:
    previous = tmp_path / "v1.json"
    previous.write_text(tidings("asyncapi", "asyncapi_app:app").stdout)
    out = tidings("asyncapi", "asyncapi_app:app", "--check", str(previous),
                  env={"ASYNCAPI_VARIANT": "optional-added"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("compatible with")
    bad = tidings("asyncapi", "asyncapi_app:app", "--check", str(tmp_path / "missing.json"))
    assert bad.returncode == 1 and "cannot read" in bad.stderr and "Traceback" not in bad.stderr
