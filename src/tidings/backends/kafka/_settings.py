"""Typed settings of the Kafka backend, read from the ``kafka://`` URL and validated.

``kafka://[user:password@]host:port[,host:port...][?option=value&...]``

Durations ending in ``_ms`` are milliseconds (Kafka's own unit for them); the
``*_timeout`` options are seconds, like every other tidings backend.

Security: TLS with a client certificate (mTLS: ``ssl_cert_file``, ``ssl_key_file``),
SASL with a password (``PLAIN``, ``SCRAM-*``) or OAUTHBEARER tokens from an OIDC
provider (``oauth_*``). A user without a password is refused, and a URL that sends
data (or a password) in clear text to a host other than this machine is logged as a
warning.
"""

from __future__ import annotations

import ipaddress
import logging
import uuid
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..._errors import ConfigurationError
from ..._redact import redact_url
from ._logging import DriverLog

__all__ = ["KafkaSettings", "parse_url"]

log = logging.getLogger("tidings.kafka")

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]
Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"]


class KafkaSettings(BaseModel):
    """Every option of a ``kafka://`` URL, with safe defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field(min_length=1)
    client_id: str = "tidings"
    security_protocol: Protocol = "PLAINTEXT"
    sasl_mechanism: Mechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = Field(default=None, repr=False, min_length=1)
    ssl_ca_file: str | None = None
    ssl_cert_file: str | None = None
    ssl_key_file: str | None = None
    ssl_key_password: str | None = Field(default=None, repr=False)
    oauth_token_url: str | None = None
    oauth_client_id: str | None = None
    oauth_client_secret: str | None = Field(default=None, repr=False)
    oauth_scope: str | None = None
    acks: Literal["all", "1", "0"] = "all"
    idempotence: bool = True
    compression: Compression = "none"
    linger_ms: float = Field(default=5.0, ge=0, le=900_000)
    batch_size: int = Field(default=1_000_000, ge=1)
    max_message_bytes: int = Field(default=1_048_576, ge=1_000)
    partitions: int = Field(default=4, ge=1)
    #: None: the cluster's ``default.replication.factor`` (and ``min.insync.replicas``).
    replication_factor: int | None = Field(default=None, ge=1)
    min_insync_replicas: int | None = Field(default=None, ge=1)
    #: Retention of the dead-letter topics tidings creates (``*.dlq``); 0 keeps their
    #: records until deleted by hand (``retention.ms=-1``), whatever the broker's default.
    dlq_retention_hours: float = Field(default=0.0, ge=0)
    session_timeout: float = Field(default=6.0, gt=0, le=3600)
    max_poll_interval: float = Field(default=300.0, gt=0)
    fetch_max_wait_ms: int = Field(default=10, ge=0, le=60_000)
    request_timeout: float = Field(default=10.0, gt=0, le=3600)
    #: How long an append may wait for the broker's acknowledgements (through an
    #: outage, and across a new producer session after a broker restart) before it
    #: fails with BrokerUnavailableError. ``delivery_timeout`` is its former name.
    publish_timeout: float = Field(default=30.0, gt=0, le=86_400)
    assignor: Literal["roundrobin", "range"] = "roundrobin"
    delay_forwarder: bool = True
    delay_group: str = "__tidings_delay"
    transactional_id: str | None = Field(default=None, min_length=1, max_length=200)
    transaction_timeout: float = Field(default=10.0, gt=0, le=900)

    @model_validator(mode="before")
    @classmethod
    def _former_names(cls, values: Any) -> Any:
        """``delivery_timeout`` is the former name of ``publish_timeout``."""
        if isinstance(values, dict) and "delivery_timeout" in values:
            values = dict(values)
            values.setdefault("publish_timeout", values.pop("delivery_timeout"))
        return values

    @model_validator(mode="after")
    def _check_security(self) -> KafkaSettings:
        """SASL needs a mechanism and its credentials (user and password, or OAuth
        client settings) and a SASL protocol; certificates need TLS."""
        uses_sasl = self.security_protocol.startswith("SASL")
        oauth = self.sasl_mechanism == "OAUTHBEARER"
        secret = (self.oauth_token_url, self.oauth_client_id, self.oauth_client_secret) \
            if oauth else (self.sasl_username, self.sasl_password)
        given = (self.sasl_mechanism, self.sasl_username, self.sasl_password,
                 self.oauth_token_url, self.oauth_client_id, self.oauth_client_secret)
        if self.sasl_username is not None and self.sasl_password is None and not oauth:
            raise ValueError(f"user {self.sasl_username!r} has no password (kafka://user:"
                             "PASSWORD@host, percent-encoded); an empty one is refused")
        if uses_sasl and (self.sasl_mechanism is None or None in secret):
            needs = "oauth_token_url, oauth_client_id and oauth_client_secret" if oauth \
                else "sasl_mechanism, user and password"
            raise ValueError(f"{self.security_protocol} needs {needs}")
        if not uses_sasl and any(value is not None for value in given):
            raise ValueError("SASL credentials need security_protocol=SASL_PLAINTEXT or SASL_SSL")
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            raise ValueError("a client certificate needs both ssl_cert_file and ssl_key_file")
        tls_files = (self.ssl_ca_file, self.ssl_cert_file, self.ssl_key_file)
        if not self.security_protocol.endswith("SSL") and any(tls_files):
            raise ValueError("ssl_* files need security_protocol=SSL or SASL_SSL")
        replicas, in_sync = self.replication_factor, self.min_insync_replicas
        if replicas is not None and in_sync is not None and in_sync > replicas:
            raise ValueError("min_insync_replicas cannot exceed replication_factor (no "
                             "append could ever be acknowledged)")
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
        return config | self._sasl_config() | self._ssl_config()

    def _sasl_config(self) -> dict[str, Any]:
        if self.sasl_mechanism is None:
            return {}
        if self.sasl_mechanism != "OAUTHBEARER":
            return {"sasl.mechanism": self.sasl_mechanism, "sasl.username": self.sasl_username,
                    "sasl.password": self.sasl_password}
        # librdkafka fetches and refreshes the tokens itself (client credentials grant).
        config = {"sasl.mechanism": "OAUTHBEARER", "sasl.oauthbearer.method": "oidc",
                  "sasl.oauthbearer.token.endpoint.url": self.oauth_token_url,
                  "sasl.oauthbearer.client.id": self.oauth_client_id,
                  "sasl.oauthbearer.client.secret": self.oauth_client_secret}
        if self.oauth_scope is not None:
            config["sasl.oauthbearer.scope"] = self.oauth_scope
        return config

    def _ssl_config(self) -> dict[str, Any]:
        names = {"ssl.ca.location": self.ssl_ca_file,
                 "ssl.certificate.location": self.ssl_cert_file,
                 "ssl.key.location": self.ssl_key_file,
                 "ssl.key.password": self.ssl_key_password}
        return {name: value for name, value in names.items() if value is not None}

    def topic_config(self) -> dict[str, str]:
        """Settings of the topics tidings creates (none: the cluster's defaults)."""
        if self.min_insync_replicas is None:
            return {}
        return {"min.insync.replicas": str(self.min_insync_replicas)}

    def clear_text_hosts(self) -> list[str]:
        """The bootstrap hosts reached without TLS that are not this machine."""
        if self.security_protocol.endswith("SSL"):
            return []
        hosts = [server.rpartition(":")[0] or server
                 for server in self.bootstrap_servers.split(",")]
        return [host for host in hosts if not _loopback(host.strip("[]"))]

    def producer_config(self) -> dict[str, Any]:
        """A producer that is acknowledged by every in-sync replica and never duplicates."""
        config = self.common_config() | {
            "acks": self.acks,
            "enable.idempotence": self.idempotence,
            "compression.type": self.compression,
            "linger.ms": self.linger_ms,
            "batch.size": self.batch_size,
            "message.max.bytes": self.max_message_bytes,
            "message.timeout.ms": int(self.publish_timeout * 1000),
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
            "message.timeout.ms": int(min(self.publish_timeout, timeout) * 1000),
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


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_URL_ONLY = {"bootstrap_servers", "sasl_username", "sasl_password"}


def parse_url(url: str) -> KafkaSettings:
    """Read ``kafka://[user:pass@]host:port[,host:port][?options]`` into settings."""
    parts = urlsplit(url)
    if parts.scheme != "kafka":
        raise ConfigurationError(f"not a kafka:// URL: {redact_url(url)!r}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    values: dict[str, Any] = {"bootstrap_servers": hosts}
    for name, given in parse_qs(parts.query, keep_blank_values=True).items():
        values[name] = given[-1]
    if userinfo:
        user, colon, password = userinfo.partition(":")
        values.setdefault("sasl_username", unquote(user))
        if colon:  # "user@host" has no password (refused), not an empty one
            values.setdefault("sasl_password", unquote(password))
    for name in ("user", "password"):
        if name in values:
            values[f"sasl_{name if name == 'password' else 'username'}"] = values.pop(name)
    try:
        settings = KafkaSettings.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        raise ConfigurationError(f"invalid kafka:// URL {redact_url(url)!r}: {problems}") from None
    clear = settings.clear_text_hosts()
    if clear:
        what = "a password and every message" if settings.sasl_mechanism else "every message"
        log.warning("%s sends %s in clear text to %s: use security_protocol=SSL or SASL_SSL "
                    "outside this machine", redact_url(url), what, ", ".join(clear))
    return settings


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "url"
    if error["type"] == "extra_forbidden":
        known = ", ".join(sorted(set(KafkaSettings.model_fields) - _URL_ONLY))
        return f"unknown option {where!r} (known: {known})"
    return f"{where}: {error['msg']}"
