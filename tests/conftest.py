"""Fixtures shared by every test: the backends the conformance suite runs on, and
isolated names."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tidings import testing

ROOT = Path(__file__).resolve().parent.parent

BACKENDS = ["memory", "sqlite"]
if (ROOT / "tests" / "kafka_broker.py").exists():
    from kafka_broker import running_tansu

    BACKENDS.append("kafka")

    @pytest.fixture(scope="session")
    def kafka_url() -> Iterator[str]:
        """One tansu broker for the whole test session (defined here, not in
        kafka_broker, which the benchmarks import without pytest)."""
        with running_tansu() as url:
            yield url


if (ROOT / "tests" / "rabbitmq_broker.py").exists():
    from rabbitmq_broker import running_rabbitmq

    BACKENDS.append("amqp")

    @pytest.fixture(scope="session")
    def amqp_url() -> Iterator[str]:
        """One private RabbitMQ node for the whole test session (~5 s to start)."""
        with running_rabbitmq() as url:
            yield url


if (ROOT / "tests" / "mqtt_broker.py").exists():
    from mqtt_broker import running_mosquitto

    BACKENDS.append("mqtt")

    @pytest.fixture(scope="session")
    def mosquitto_url() -> Iterator[str]:
        """One private mosquitto for the whole test session."""
        with running_mosquitto() as url:
            yield url


def _memory(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return testing.memory_url(session_timeout=1.5)


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/bus.db?session_timeout=1.5"


def _kafka(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(request.getfixturevalue("kafka_url"))


def _amqp(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"{request.getfixturevalue('amqp_url')}?session_timeout=1.5"


def _mqtt(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(request.getfixturevalue("mosquitto_url"))


#: How each built-in backend gets a broker isolated for one test (a new backend: one line).
URLS = {"memory": _memory, "sqlite": _sqlite, "kafka": _kafka, "amqp": _amqp,
        "mqtt": _mqtt}


@pytest.fixture(params=BACKENDS)
def tidings_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each conformance test (tidings.testing.conformance) runs once per backend, on a
    broker isolated for it."""
    return URLS[request.param](request, tmp_path)


@pytest.fixture
def names() -> Any:
    """Unique topic and group names, so tests never see each other's data on a shared broker."""
    suffix = uuid.uuid4().hex[:8]
    return lambda base: f"{base}-{suffix}"
