"""One trace across OS processes: an outbox row recorded in a server span, its relay's
send, a saga started in a transaction, the saga's command (request/reply), a retry and
a dead letter, on the embedded bus and on Kafka. Each process exports its spans with
the OpenTelemetry SDK (see traced.py); the test joins them and checks the tree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ROLES = ("inventory", "orders", "front")


@pytest.fixture(params=["sqlite", "kafka"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/bus.db?session_timeout=2"
    return str(request.getfixturevalue("kafka_url"))


def _wait(path: Path, procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        for proc in procs:
            assert proc.poll() is None, f"a service exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"timed out waiting for {path.name}"
        time.sleep(0.05)


def _spans(work: Path) -> list[dict[str, Any]]:
    spans = []
    for role in ROLES:
        path = work / f"spans-{role}.jsonl"
        if path.exists():
            spans += [json.loads(line) for line in path.read_text().splitlines() if line]
    return spans


def _run_flow(broker: str, work: Path) -> list[dict[str, Any]]:
    suffix = uuid.uuid4().hex[:8]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for role in ROLES:  # consumers first: the front publishes as it starts
            procs.append(subprocess.Popen(
                [sys.executable, str(HERE / "traced.py"), role, broker, str(work), suffix],
                env=env))
            _wait(work / f"ready-{role}", procs, 60)
        _wait(work / "shipped", procs, 60)
        deadline = time.monotonic() + 30
        while not any(s["name"].endswith(".dlq") for s in _spans(work)):
            assert time.monotonic() < deadline, "no dead letter was sent"
            time.sleep(0.05)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return _spans(work)


def _one(spans: list[dict[str, Any]], name: str, service: str, **attributes: Any
         ) -> dict[str, Any]:
    found = [s for s in spans if s["name"] == name and s["service"] == service
             and all(s["attributes"].get(k) == v for k, v in attributes.items())]
    assert found, f"no span {name!r} in {service} with {attributes}"
    return found[0]


def test_one_trace_across_outbox_saga_command_retry_and_dead_letter(
        broker: str, tmp_path: Path) -> None:
    spans = _run_flow(broker, tmp_path)
    system = "kafka" if broker.startswith("kafka") else "sqlite"
    by_id = {s["span_id"]: s for s in spans}

    def parent(span: dict[str, Any]) -> dict[str, Any]:
        assert span["parent_id"] in by_id, f"{span['name']} has no parent among the spans"
        return by_id[span["parent_id"]]

    root = _one(spans, "POST /orders", "front")
    flow = [s for s in spans if s["trace_id"] == root["trace_id"]]
    assert {s["service"] for s in flow} == {"front", "orders", "inventory"}

    suffix = next(s["attributes"]["messaging.destination.name"] for s in flow
                  if s["name"].startswith("create "))[len("orders-"):]
    orders, reserve, shipments = (f"{n}-{suffix}" for n in ("orders", "reserve", "shipments"))

    create = _one(flow, f"create {orders}", "front")
    assert create["kind"] == "PRODUCER" and parent(create) is root
    send = _one(flow, f"send {orders}", "front", **{"messaging.operation.name": "relay"})
    assert send["kind"] == "PRODUCER" and parent(send) is create
    process = _one(flow, f"process {orders}", "orders")
    assert process["kind"] == "CONSUMER" and parent(process) is send
    attrs = process["attributes"]
    assert attrs["messaging.system"] == system
    assert attrs["messaging.operation.type"] == "process"
    assert attrs["messaging.destination.name"] == orders
    assert attrs["messaging.consumer.group.name"] == "orders"
    assert attrs["messaging.message.id"] == send["attributes"]["messaging.message.id"]
    assert attrs["messaging.message.conversation_id"] == attrs["messaging.message.id"]
    assert "messaging.destination.partition.id" in attrs
    if system == "kafka":
        assert attrs["messaging.kafka.message.key"] == "o-1"
        assert isinstance(attrs["messaging.kafka.offset"], int)
    else:
        assert "messaging.kafka.offset" not in attrs

    # The saga, started in the handler's transaction, runs its command under it.
    request = _one(flow, f"send {reserve}", "orders", **{"messaging.operation.name": "request"})
    assert parent(request) is process
    answer = _one(flow, f"process {reserve}", "inventory")
    assert parent(answer) is request and answer["attributes"]["messaging.tidings.kind"] == \
        "responder"
    reply = _one(flow, "send tidings.replies", "inventory")
    assert parent(reply) is answer

    shipped = _one(flow, f"send {shipments}", "orders")
    assert parent(shipped) is process
    shipping = [s for s in flow if s["name"] == f"process {shipments}"
                and s["attributes"]["messaging.consumer.group.name"] == "shipping"]
    assert [s["attributes"]["messaging.tidings.attempt"] for s in shipping] == [1, 2]
    assert all(parent(s) is shipped for s in shipping)
    assert shipping[0]["attributes"]["error.type"] == "ConnectionError"
    assert "retry" in shipping[0]["events"] and shipping[0]["status"] == "ERROR"
    assert "error.type" not in shipping[1]["attributes"]

    audit = _one(flow, f"process {shipments}", "inventory",
                 **{"messaging.consumer.group.name": "audit"})
    assert "dead_letter" in audit["events"] and audit["attributes"]["error.type"] == "ValueError"
    dead = _one(flow, f"send {shipments}.dlq", "inventory")
    assert dead["attributes"]["messaging.operation.name"] == "dead-letter"
    assert parent(dead) is shipped  # the dead letter continues the failed message's trace
