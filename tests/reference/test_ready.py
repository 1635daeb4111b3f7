"""Readiness: a service's GET /ready answers 200 while its bus answers and 503, with the
reason as JSON, once the bus is unreachable (its Kafka broker or RabbitMQ node killed);
GET /health, the liveness probe, stays 200 meanwhile."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from reference.common.settings import Settings, free_base_port
from shop import ROOT, stop

from kafka_broker import running_tansu
from rabbitmq_broker import running_rabbitmq

BROKERS = {"kafka": running_tansu, "amqp": running_rabbitmq}


@pytest.mark.parametrize("bus", list(BROKERS))
def test_ready_goes_503_when_the_bus_is_unreachable(tmp_path: Path, bus: str) -> None:
    with ExitStack() as broker_stack:
        broker = broker_stack.enter_context(BROKERS[bus]())
        settings = Settings(base_port=free_base_port(), data_dir=tmp_path, broker=broker)
        env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}
        log = (tmp_path / "notifications.log").open("wb")
        service = subprocess.Popen([sys.executable, "-m", "reference.notifications"],
                                   cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            with httpx.Client(base_url=settings.url("notifications"), timeout=10) as http:
                ready = _poll(http, 200, 60)
                assert ready["ready"] is True and ready["connected"] is True
                broker_stack.close()  # the broker dies; the service runs on
                down = _poll(http, 503, 30)
                assert down["ready"] is False and down["connected"] is False
                assert any("bus" in reason for reason in down["reasons"]), down
                assert http.get("/health").status_code == 200
        finally:
            stop(service)
            log.close()


def _poll(http: httpx.Client, status: int, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = http.get("/ready")
            if response.status_code == status:
                body: dict[str, object] = response.json()
                return body
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"/ready never answered {status}"
        time.sleep(0.2)
