"""Typed settings every service reads from its environment (the supervisor sets them)."""

from __future__ import annotations

import enum
import os
import random
import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["PORT_OFFSETS", "SERVICES", "Mode", "Settings", "SettingsError", "free_base_port"]

#: Each service listens on the base port plus its offset (frontend 8000, users 8001, ...).
PORT_OFFSETS: dict[str, int] = {
    "frontend": 0,
    "users": 1,
    "orders": 2,
    "inventory": 3,
    "payments": 4,
    "notifications": 5,
    "console": 6,  # the tidings console
}
SERVICES = tuple(PORT_OFFSETS)


def free_base_port() -> int:
    """A base port whose service ports are all free (for tests and benchmarks).

    Picked below the kernel's ephemeral range: a port from that range (what binding to
    port 0 gives) can be taken by any outgoing connection, a Kafka client's say, in the
    seconds before the service binds it."""
    low = _ephemeral_low()
    for _ in range(200):
        base = random.randrange(10_000, max(low - len(PORT_OFFSETS), 10_001))
        if all(_port_free(base + i) for i in range(len(PORT_OFFSETS))):
            return base
    raise RuntimeError(f"no free block of {len(PORT_OFFSETS)} ports")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
DEFAULT_BASE_PORT = 8000
DEFAULT_DATA_DIR = ".reference"


class Mode(enum.StrEnum):
    """How the order flow is coordinated."""

    CHOREOGRAPHY = "choreography"
    ORCHESTRATION = "orchestration"


class SettingsError(Exception):
    """The environment holds an invalid setting."""


class Settings(BaseModel):
    """Where a service listens, keeps its data and finds the bus; validated when built."""

    model_config = ConfigDict(frozen=True)

    base_port: int = Field(DEFAULT_BASE_PORT, ge=1024, le=65000)
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    broker: str | None = None
    mode: Mode = Mode.CHOREOGRAPHY
    host: str = "127.0.0.1"
    #: The orders service's fraud rule file (default: ``reference/orders/fraud.yaml``).
    fraud_rules: Path | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read ``REFERENCE_BASE_PORT``, ``REFERENCE_DATA_DIR``, ``REFERENCE_MODE``,
        ``REFERENCE_FRAUD_RULES`` and ``TIDINGS_BROKER``."""
        env = dict(os.environ) if env is None else env
        raw = {
            "base_port": env.get("REFERENCE_BASE_PORT", DEFAULT_BASE_PORT),
            "data_dir": env.get("REFERENCE_DATA_DIR", DEFAULT_DATA_DIR),
            "broker": env.get("TIDINGS_BROKER") or None,
            "mode": env.get("REFERENCE_MODE", Mode.CHOREOGRAPHY.value),
            "fraud_rules": env.get("REFERENCE_FRAUD_RULES") or None,
        }
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise SettingsError(str(exc)) from None

    def to_env(self) -> dict[str, str]:
        """The environment variables that rebuild these settings in a child process."""
        return {
            "REFERENCE_BASE_PORT": str(self.base_port),
            "REFERENCE_DATA_DIR": str(self.data_dir),
            "REFERENCE_MODE": self.mode.value,
            "TIDINGS_BROKER": self.broker_url,
            **({"REFERENCE_FRAUD_RULES": str(self.fraud_rules)} if self.fraud_rules else {}),
        }

    @property
    def broker_url(self) -> str:
        """The bus: the given URL, else an embedded SQLite log in the data directory."""
        return self.broker or f"sqlite:///{self.data_dir.resolve()}/bus.db"

    def port(self, service: str) -> int:
        """The HTTP port of ``service``."""
        return self.base_port + PORT_OFFSETS[service]

    def url(self, service: str) -> str:
        """The base URL of ``service``'s HTTP API."""
        return f"http://{self.host}:{self.port(service)}"

    def database(self, service: str) -> Path:
        """The SQLite file that only ``service`` opens."""
        return self.data_dir.resolve() / f"{service}.db"
