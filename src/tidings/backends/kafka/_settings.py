"""Typed settings of the Kafka backend, read from the ``kafka://`` URL and validated.

``kafka://[user:password@]host:port[,host:port...][?option=value&...]``

Durations ending in ``_ms`` are milliseconds (Kafka's own unit for them); the
``*_timeout`` options are seconds, like every other tidings backend.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..._errors import ConfigurationError
from ._logging import DriverLog

__all__ = ["KafkaSettings", "parse_url"]

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"]


class KafkaSettings(BaseModel):
    """Every option of a ``kafka://`` URL, with safe defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field(min_length=1)
    client_id: str = "tidings"
    security_protocol: Protocol = "PLAINTEXT"
    sasl_mechanism: Mechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = Field(default=None, repr=False)
    ssl_ca_file: str | None = None
    acks: Literal["all", "1", "0"] = "all"
    idempotence: bool = True
    compression: Compression = "none"
    linger_ms: float = Field(default=5.0, ge=0, le=900_000)
    batch_size: int = Field(default=1_000_000, ge=1)
    max_message_bytes: int = Field(default=1_048_576, ge=1_000)
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    #: Retention of the dead-letter topics tidings creates (``*.dlq``); 0 keeps their
    #: records until deleted by hand (``retention.ms=-1``), whatever the broker's default.
    dlq_retention_hours: float = Field(default=0.0, ge=0)
    session_timeout: float = Field(default=6.0, gt=0, le=3600)
    max_poll_interval: float = Field(default=300.0, gt=0)
    fetch_max_wait_ms: int = Field(default=10, ge=0, le=60_000)
    request_timeout: float = Field(default=10.0, gt=0, le=3600)
    delivery_timeout: float = Field(default=30.0, gt=0, le=86_400)
    assignor: Literal["roundrobin", "range"] = "roundrobin"
    delay_forwarder: bool = True
    delay_group: str = "__tidings_delay"
    transactional_id: str | None = Field(default=None, min_length=1, max_length=200)
    transaction_timeout: float = Field(default=10.0, gt=0, le=900)

    @model_validator(mode="after")
    def _check_security(self) -> KafkaSettings:
        """SASL needs all of mechanism, user and password, and a SASL protocol."""
        sasl_fields = (self.sasl_mechanism, self.sasl_username, self.sasl_password)
        uses_sasl = self.security_protocol.startswith("SASL")
        if uses_sasl and None in sasl_fields:
            raise ValueError(f"{self.security_protocol} needs sasl_mechanism, user and password")
        if not uses_sasl and any(value is not None for value in sasl_fields):
            raise ValueError("SASL credentials need security_protocol=SASL_PLAINTEXT or SASL_SSL")
        if self.idempotence and self.acks != "all":
            raise ValueError("an idempotent producer needs acks=all (or set idempotence=false)")
        if self.transactional_id is not None and not self.idempotence:
            raise ValueError("transactions need idempotence=true")
        return self

    # -- librdkafka configurations -------------------------------------------------

    def common_config(self) -> dict[str, Any]:
        """Options every librdkafka handle (producer, consumer, admin) shares."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
            "socket.timeout.ms": int(self.request_timeout * 1000),
            "reconnect.backoff.max.ms": 1000,
            # librdkafka logs through Python logging, not straight to stderr, and the
            # tries it repeats by itself at debug level.
            "logger": DriverLog(logging.getLogger("tidings.kafka.librdkafka")),
        }
        if self.sasl_mechanism is not None:
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username
            config["sasl.password"] = self.sasl_password
        if self.ssl_ca_file is not None:
            config["ssl.ca.location"] = self.ssl_ca_file
        return config

    def producer_config(self) -> dict[str, Any]:
        """A producer that is acknowledged by every in-sync replica and never duplicates."""
        config = self.common_config() | {
            "acks": self.acks,
            "enable.idempotence": self.idempotence,
            "compression.type": self.compression,
            "linger.ms": self.linger_ms,
            "batch.size": self.batch_size,
            "message.max.bytes": self.max_message_bytes,
            "message.timeout.ms": int(self.delivery_timeout * 1000),
            "request.timeout.ms": int(self.request_timeout * 1000),
            # Java's partitioner, so keyed records land where other Kafka clients put them.
            "partitioner": "murmur2_random",
        }
        return config

    def transactional_config(self, transactional_id: str) -> dict[str, Any]:
        """A producer for exactly-once subscribers: one transaction per commit."""
        timeout = self.transaction_timeout
        return self.producer_config() | {
            "transactional.id": transactional_id,
            "enable.idempotence": True,
            "acks": "all",
            "transaction.timeout.ms": int(timeout * 1000),
            # librdkafka refuses a delivery timeout longer than the transaction's.
            "message.timeout.ms": int(min(self.delivery_timeout, timeout) * 1000),
        }

    def consumer_config(
        self, group: str | None, reset: str, *, eof: bool = False
    ) -> dict[str, Any]:
        """A consumer that commits only when told to, after the runtime handled records."""
        session_ms = int(self.session_timeout * 1000)
        return self.common_config() | {
            # librdkafka needs a group id even for a group-less (assign-only) consumer.
            "group.id": group if group is not None else f"__tidings_reader_{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": reset,
            "session.timeout.ms": session_ms,
            "heartbeat.interval.ms": self.heartbeat_ms(),
            "max.poll.interval.ms": int(self.max_poll_interval * 1000),
            "fetch.wait.max.ms": self.fetch_max_wait_ms,
            "partition.assignment.strategy": self.assignor,
            "isolation.level": "read_committed",
            "enable.partition.eof": eof,
            # librdkafka waits this long before looking up where a partition without a
            # committed offset starts: 100 ms by default, paid at every assignment.
            "retry.backoff.ms": 10,
        }

    def heartbeat_ms(self) -> int:
        """Heartbeat often: a member learns of a rebalance at its next heartbeat."""
        return max(min(int(self.session_timeout * 1000) // 3, 300), 50)

    def admin_config(self) -> dict[str, Any]:
        """An admin client."""
        return self.common_config()


_URL_ONLY = {"bootstrap_servers", "sasl_username", "sasl_password"}


def parse_url(url: str) -> KafkaSettings:
    """Read ``kafka://[user:pass@]host:port[,host:port][?options]`` into settings."""
    parts = urlsplit(url)
    if parts.scheme != "kafka":
        raise ConfigurationError(f"not a kafka:// URL: {url!r}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    values: dict[str, Any] = {"bootstrap_servers": hosts}
    for name, given in parse_qs(parts.query, keep_blank_values=True).items():
        values[name] = given[-1]
    if userinfo:
        user, _, password = userinfo.partition(":")
        values.setdefault("sasl_username", unquote(user))
        values.setdefault("sasl_password", unquote(password))
    for name in ("user", "password"):
        if name in values:
            values[f"sasl_{name if name == 'password' else 'username'}"] = values.pop(name)
    try:
        return KafkaSettings.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        raise ConfigurationError(f"invalid kafka:// URL {_redact(url)!r}: {problems}") from None


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "url"
    if error["type"] == "extra_forbidden":
        known = ", ".join(sorted(set(KafkaSettings.model_fields) - _URL_ONLY))
        return f"unknown option {where!r} (known: {known})"
    return f"{where}: {error['msg']}"


def _redact(url: str) -> str:
    """The URL without its password (in the user info or the query)."""
    url = re.sub(r"(password=)[^&]*", r"\1***", url)
    netloc = urlsplit(url).netloc
    if "@" not in netloc:
        return url
    return url.replace(netloc, "***@" + netloc.rpartition("@")[2], 1)
