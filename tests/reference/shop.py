"""Running the reference shop for tests: the supervisor on free ports in a temp directory."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from reference.client import APPROVE, bearer
from reference.common.settings import SERVICES, Settings, free_base_port

ROOT = Path(__file__).resolve().parents[2]


class Shop:
    """A running shop: its settings, its supervisor and the combined log."""

    def __init__(self, settings: Settings, process: subprocess.Popen[bytes], log: Path) -> None:
        self.settings = settings
        self.process = process
        self.log = log
        self.http = httpx.Client(timeout=10)
        #: The ``Authorization`` header with the admin token.
        self.admin = bearer(settings.admin_token.get_secret_value())

    def url(self, service: str, path: str = "") -> str:
        """The URL of ``path`` on ``service``."""
        return f"{self.settings.url(service)}{path}"

    def register(self, username: str, age: int = 30, address: str = "Hangzhou"
                 ) -> dict[str, Any]:
        """A new user: ``POST /register``'s answer (``id``, ``token``, ...)."""
        response = self.http.post(self.url("users", "/register"), json={
            "username": username, "age": age, "address": address})
        assert response.status_code == 201, response.text
        user: dict[str, Any] = response.json()
        return user

    def card_token(self, user: dict[str, Any], card: str = APPROVE) -> str:
        """``card`` tokenized by the payments vault for ``user``."""
        response = self.http.post(self.url("payments", "/vault"), json={"card_number": card},
                                  headers=bearer(user["token"]))
        assert response.status_code == 201, response.text
        token: str = response.json()["card_token"]
        return token

    def lines(self, service: str) -> list[str]:
        """Every line ``service`` logged so far (prefix removed)."""
        prefix = re.compile(rf"^{re.escape(service)}\s*\| (.*)$")
        text = self.log.read_text(errors="replace")
        return [m.group(1) for line in text.splitlines() if (m := prefix.match(line))]

    def wait_for_line(self, service: str, text: str, timeout: float = 20.0) -> None:
        """Wait until ``service`` logged ``text``."""
        deadline = time.monotonic() + timeout
        while text not in self.lines(service):
            if time.monotonic() > deadline:
                raise AssertionError(f"{service} never logged {text!r}")
            time.sleep(0.1)

    def pid(self, service: str) -> int:
        """The current process id of ``service`` (from its /health)."""
        pid: int = self.http.get(self.url(service, "/health")).json()["pid"]
        return pid

    def wait_healthy(self, timeout: float = 60.0, exclude: int | None = None) -> None:
        """Until every service answers /health (with a pid other than ``exclude``)."""
        deadline = time.monotonic() + timeout
        for service in SERVICES:
            while True:
                try:
                    body: dict[str, Any] = self.http.get(self.url(service, "/health")).json()
                    if body["pid"] != exclude:
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{service} did not come up:\n{self.log.read_text()}")
                time.sleep(0.1)


@contextmanager
def running_shop(tmp: Path, mode: str = "choreography", broker: str | None = None,
                 fraud_rules: Path | None = None, env: dict[str, str] | None = None,
                 base_port: int | None = None) -> Iterator[Shop]:
    """Start every service under the supervisor (orders with ``fraud_rules``, if
    given, instead of its own rule file; with ``env`` added to the environment); stop
    them all afterwards."""
    settings = Settings(base_port=base_port or free_base_port(), data_dir=tmp / "data",
                        broker=broker,
                        admin_token=SecretStr(secrets.token_urlsafe(16)))
    log = tmp / "shop.log"
    command = [sys.executable, "-m", "reference.supervisor", "--base-port",
               str(settings.base_port), "--data-dir", str(settings.data_dir), "--mode", mode]
    if broker:
        command += ["--broker", broker]
    environ = {**os.environ, "PYTHONPATH": str(ROOT),
               "SHOP_ADMIN_TOKEN": settings.admin_token.get_secret_value(), **(env or {})}
    environ.pop("TIDINGS_BROKER", None)
    environ.pop("REFERENCE_FRAUD_RULES", None)
    if fraud_rules is not None:
        environ["REFERENCE_FRAUD_RULES"] = str(fraud_rules)
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=environ, stdout=out,
                                   stderr=subprocess.STDOUT)
    shop = Shop(settings, process, log)
    try:
        shop.wait_healthy()
        yield shop
    finally:
        shop.http.close()
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if it is still running 30 s later."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
