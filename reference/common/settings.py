"""Typed settings every service reads from its environment (the supervisor sets them)."""

from __future__ import annotations

import enum
import os
import random
import secrets
import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

__all__ = ["PORT_OFFSETS", "SERVICES", "Mode", "Settings", "SettingsError", "free_base_port",
           "taken_ports"]

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


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind ``port`` now. Like uvicorn, with ``SO_REUSEADDR``: a
    port whose last connections linger in TIME_WAIT (a shop stopped a moment ago) is
    free to a server."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def taken_ports(settings: Settings) -> list[tuple[str, int]]:
    """The services whose port is taken on the settings' host, with the port."""
    return [(name, settings.port(name)) for name in SERVICES
            if not _port_free(settings.port(name), settings.host)]


def _random_secret() -> SecretStr:
    return SecretStr(secrets.token_urlsafe(32))
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
    #: The key every service signs and checks tokens with (users' and cards'): the
    #: supervisor makes one per run and gives it to every service, so any service checks
    #: a token without asking another (``SHOP_SECRET``).
    secret: SecretStr = Field(default_factory=_random_secret)
    #: What the admin endpoints (restocking, fraud rules) want as bearer token
    #: (``SHOP_ADMIN_TOKEN``; the demo makes one and prints it).
    admin_token: SecretStr = Field(default_factory=_random_secret)
    #: Host names the services answer besides localhost and 127.0.0.1
    #: (``SHOP_ALLOWED_HOSTS``, comma-separated).
    allowed_hosts: tuple[str, ...] = ()
    #: How long an inbox remembers a handled message (``REFERENCE_INBOX_RETENTION``, in
    #: seconds): longer than any redelivery can take, so a week.
    inbox_retention: float = Field(7 * 24 * 3600, gt=0)
    #: When each service forgets older inbox rows (a cron expression).
    inbox_prune_cron: str = "17 * * * *"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read ``REFERENCE_BASE_PORT``, ``REFERENCE_DATA_DIR``, ``REFERENCE_MODE``,
        ``REFERENCE_FRAUD_RULES``, ``REFERENCE_INBOX_RETENTION``, ``TIDINGS_BROKER``,
        ``SHOP_SECRET``, ``SHOP_ADMIN_TOKEN`` and ``SHOP_ALLOWED_HOSTS``."""
        env = dict(os.environ) if env is None else env
        raw: dict[str, object] = {
            key: env[name] for key, name in (
                ("secret", "SHOP_SECRET"), ("admin_token", "SHOP_ADMIN_TOKEN"),
                ("inbox_retention", "REFERENCE_INBOX_RETENTION"),
                ("inbox_prune_cron", "REFERENCE_INBOX_PRUNE_CRON"))
            if env.get(name)
        }
        hosts = env.get("SHOP_ALLOWED_HOSTS", "")
        raw |= {
            "allowed_hosts": tuple(h.strip() for h in hosts.split(",") if h.strip()),
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
            "SHOP_SECRET": self.secret.get_secret_value(),
            "SHOP_ADMIN_TOKEN": self.admin_token.get_secret_value(),
            "SHOP_ALLOWED_HOSTS": ",".join(self.allowed_hosts),
            "REFERENCE_INBOX_RETENTION": str(self.inbox_retention),
            "REFERENCE_INBOX_PRUNE_CRON": self.inbox_prune_cron,
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
