"""Fixtures of the reference-system tests: whole shops, every service its own process."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the reference package lives at the repository root

from shop import Shop, running_shop  # noqa: E402

from kafka_broker import running_tansu  # noqa: E402
from otlp_collector import Collector, running_collector  # noqa: E402
from rabbitmq_broker import new_vhost  # noqa: E402

#: (mode, bus): every flow test runs on each.
SETUPS = [
    ("choreography", "sqlite"),
    ("orchestration", "sqlite"),
    ("choreography", "kafka"),
    ("orchestration", "kafka"),
    ("choreography", "amqp"),
    ("orchestration", "amqp"),
]


@pytest.fixture(scope="session")
def collector() -> Iterator[Collector]:
    """An OTLP receiver every flow-test shop exports its traces to."""
    with running_collector() as received:
        yield received


@pytest.fixture(scope="module", ids=[f"{m}-{b}" for m, b in SETUPS], params=SETUPS)
def shop(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
         collector: Collector) -> Iterator[Shop]:
    """A shop in one mode on one bus, shared by the tests of a module; it exports its
    traces to ``collector`` (spans batched for 100 ms)."""
    mode, bus = request.param
    tracing = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with ExitStack() as stack:
        # Each Kafka shop gets its own broker: the services use fixed topic and group names.
        broker = stack.enter_context(running_tansu()) if bus == "kafka" else None
        if bus == "amqp":  # a vhost of its own on the session's RabbitMQ node
            broker = new_vhost(request.getfixturevalue("amqp_url"), f"shop-{mode}")
        tmp = tmp_path_factory.mktemp(f"shop-{mode}-{bus}")
        yield stack.enter_context(running_shop(tmp, mode, broker, env=tracing))


@pytest.fixture(scope="module")
def sqlite_shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    """One shop (choreography, embedded bus) for tests that need any shop."""
    with running_shop(tmp_path_factory.mktemp("shop")) as shop:
        yield shop
