"""The tidings command, run as a user runs it: a separate process on a real SQLite bus."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from processes import service_process
from tidings import App, RetryPolicy
from tidings._backends import load_transport
from tidings._errors import MissingDependencyError


def tidings(broker: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tidings.cli", "--broker", broker, *args],
                          capture_output=True, text=True, timeout=60, input=stdin)


@pytest.fixture
def broker(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/bus.db"


def test_publish_topics_and_tail(broker: str) -> None:
    out = tidings(broker, "--json", "publish", "users", '{"userId": 1}', "--key", "u1",
                  "--header", "trace=abc")
    assert out.returncode == 0, out.stderr
    published = json.loads(out.stdout)
    assert published["topic"] == "users" and published["offset"] == 0
    topics = json.loads(tidings(broker, "--json", "topics").stdout)
    assert [t["topic"] for t in topics] == ["users"] and topics[0]["messages"] == 1
    assert "users" in tidings(broker, "topics").stdout
    tail = tidings(broker, "--json", "tail", "users", "--from", "earliest", "--limit", "1")
    assert tail.returncode == 0, tail.stderr
    record = json.loads(tail.stdout)
    assert record["value"] == {"userId": 1} and record["key"] == "u1"
    assert record["headers"]["trace"] == "abc"


def test_groups_show_lag_and_reset_offsets_replays(broker: str) -> None:
    for n in range(3):
        assert tidings(broker, "publish", "orders", json.dumps({"n": n})).returncode == 0
    tail = tidings(broker, "tail", "orders", "--group", "billing", "--from", "earliest",
                   "--limit", "3")
    assert tail.returncode == 0, tail.stderr
    groups = json.loads(tidings(broker, "--json", "groups").stdout)
    billing = next(g for g in groups if g["group"] == "billing")
    assert billing["lag"] == {"orders": 0}
    reset = tidings(broker, "reset-offsets", "billing", "orders", "--to", "earliest")
    assert reset.returncode == 0, reset.stderr
    groups = json.loads(tidings(broker, "--json", "groups").stdout)
    assert next(g for g in groups if g["group"] == "billing")["lag"] == {"orders": 3}
    bad = tidings(broker, "reset-offsets", "billing", "orders", "--to", "yesterday")
    assert bad.returncode == 2 and "yesterday" in bad.stderr


def test_dlq_list_show_redrive_purge(broker: str) -> None:
    async def fail_twice() -> None:
        app = App("billing", broker=broker)

        @app.subscriber("payments", retry=RetryPolicy.never())
        async def charge(payload: dict) -> None:
            raise RuntimeError(f"card {payload['card']} declined")

        async with app:
            await app.publish("payments", {"card": "4000"}, key="order-1")
            await app.publish("payments", {"card": "4001"}, key="order-2")
            for _ in range(200):
                with contextlib.suppress(LookupError):  # until the .dlq topic exists
                    if len(await app.dead_letters("payments").pending()) == 2:
                        return
                await asyncio.sleep(0.02)
        raise AssertionError("no dead letters")

    asyncio.run(fail_twice())
    listed = json.loads(tidings(broker, "--json", "dlq", "list", "payments").stdout)
    assert [e["error_type"] for e in listed] == ["builtins.RuntimeError"] * 2
    assert "declined" in tidings(broker, "dlq", "list", "payments").stdout
    position = listed[0]["position"]
    shown = json.loads(tidings(broker, "--json", "dlq", "show", "payments", position).stdout)
    assert shown["group"] == "billing" and shown["key"] in {"order-1", "order-2"}
    assert "declined" in shown["error_message"]
    redriven = tidings(broker, "--json", "dlq", "redrive", "payments", "--entry", position)
    assert json.loads(redriven.stdout) == {"redriven": 1}
    assert len(json.loads(tidings(broker, "--json", "dlq", "list", "payments").stdout)) == 1
    purged = tidings(broker, "--json", "dlq", "purge", "payments", "--yes")
    assert json.loads(purged.stdout) == {"purged": 1}
    assert "no pending" in tidings(broker, "dlq", "list", "payments").stdout
    missing = tidings(broker, "dlq", "show", "payments", "0:999")
    assert missing.returncode == 1 and "no pending dead letter" in missing.stderr


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--broker", "redis://x", "topics"], 1, "expected one of memory://, sqlite://, kafka://"),
    (["dlq", "redrive", "nope"], 1, "no dead-letter topic 'nope.dlq'"),
    (["publish", "t", "{oops"], 2, "not valid JSON"),
    (["publish", "bad topic", "{}"], 1, "invalid topic name"),
    (["publish", "t", '{"a": 1}', "--header", "novalue"], 2, "NAME=VALUE"),
    (["run", "no_such_module:app"], 1, "cannot import 'no_such_module'"),
    (["run", "json:dumps"], 1, "is not a tidings App"),
    (["tail"], 2, "Missing argument"),
])
def test_errors_are_one_clear_line(broker: str, args: list[str], code: int, message: str) -> None:
    out = tidings(broker, *args)
    assert out.returncode == code, (out.stdout, out.stderr)
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_extra_names_the_pip_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name.startswith(("tidings.backends.kafka", "confluent_kafka")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'tidings\[kafka\]'"):
        load_transport("kafka://127.0.0.1:9092")


def test_run_serves_until_sigterm_then_exits_cleanly(broker: str) -> None:
    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "tidings.cli", "--broker", broker, "run",
               "examples.registration:notifications"]
    with service_process(command, root) as (proc, output):
        line = output.readline()
        assert "running on" in line, line
        event = '{"type": "USER_REGISTERED", "userId": 42, "username": "Alice Smith"}'
        assert tidings(broker, "publish", "users", event).returncode == 0
        while "Received registration event" not in line:
            line = output.readline()
        assert "user 42 (Alice Smith)" in line
        proc.terminate()
        assert proc.wait(30) == 0
