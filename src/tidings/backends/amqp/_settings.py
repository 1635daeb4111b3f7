"""Typed settings of the RabbitMQ backend, read from the ``amqp://`` URL and validated.

``amqp://user:password@host:port/vhost[?option=value&...]`` (``amqps://`` for TLS). The
vhost is the URL's path, percent-encoded (``/`` is ``%2F``; an empty path is ``/``).
Durations are seconds, like every other tidings backend.

A cluster is named by its nodes, comma-separated:
``amqp://user:password@rabbit-1:5672,rabbit-2:5672,rabbit-3/vhost`` (a node without a
port gets the scheme's default). tidings connects to the first that answers and, when
that connection is lost, to the next.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..._errors import ConfigurationError
from ..._redact import redact_url

__all__ = ["AmqpSettings", "parse_url"]


class AmqpSettings(BaseModel):
    """Every option of an ``amqp://`` URL, with safe defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scheme: Literal["amqp", "amqps"] = "amqp"
    host: str = Field(default="localhost", min_length=1)
    port: int = Field(default=5672, ge=1, le=65535)
    username: str = "guest"
    password: str = Field(default="guest", repr=False)
    vhost: str = "/"
    #: Partitions (streams) of a topic created without an explicit count.
    partitions: int = Field(default=4, ge=1, le=1000)
    #: A member not heard from for this long loses its partitions to the others.
    session_timeout: float = Field(default=6.0, gt=0, le=3600)
    connect_timeout: float = Field(default=5.0, gt=0, le=600)
    #: Stream consumer credit per subscription (RabbitMQ's prefetch): load levelling.
    prefetch: int = Field(default=2000, ge=1, le=65535)
    #: Type of tidings' own queues (delay buckets): ``quorum`` to replicate them.
    queue_type: Literal["classic", "quorum"] = "classic"
    #: How long a partition's reads wait for a quiet stream to tell its end (seconds).
    end_wait: float = Field(default=0.15, gt=0, le=60)
    heartbeat: int = Field(default=30, ge=0, le=3600)
    #: Every node of the URL, in order (``host``/``port`` are the first).
    addresses: tuple[tuple[str, int], ...] = ()
    #: How long a publish waits for the broker while it is unreachable (reconnecting,
    #: or a stream electing a new leader) before it raises ``BrokerUnavailableError``.
    publish_timeout: float = Field(default=30.0, gt=0, le=3600)
    #: A replicated cluster: tidings' own queues are quorum queues, the URL must name at
    #: least three nodes, and ``start`` checks that they are nodes of one cluster.
    replicated: bool = False

    @model_validator(mode="before")
    @classmethod
    def _replicated_queues(cls, data: object) -> object:
        if isinstance(data, dict) and str(data.get("replicated", "")).lower() in (
                "true", "1", "yes", "on") and "queue_type" not in data:
            return {**data, "queue_type": "quorum"}
        return data

    @model_validator(mode="after")
    def _enough_nodes(self) -> AmqpSettings:
        if not self.replicated:
            return self
        if self.queue_type != "quorum":
            raise ValueError("replicated=true keeps tidings' own queues in quorum queues; "
                             "queue_type=classic contradicts it")
        if len(self.nodes()) < 3:
            raise ValueError(
                f"replicated=true needs the URL to name at least three nodes of the cluster "
                f"(amqp://user:password@host1:port,host2:port,host3:port/vhost); it names "
                f"{len(self.nodes())}: a single node replicates nothing, and quorum queues "
                "and streams need a majority of their replicas, so two nodes survive no loss")
        return self

    def nodes(self) -> tuple[tuple[str, int], ...]:
        """Every node to try, in the URL's order."""
        return self.addresses or ((self.host, self.port),)

    def connection_url(self, address: tuple[str, int] | None = None) -> str:
        """The URL aiormq connects with to ``address`` (default: the first node),
        without tidings' own options."""
        from urllib.parse import quote

        host, port = address or self.nodes()[0]
        host = f"[{host}]" if ":" in host else host
        auth = f"{quote(self.username, safe='')}:{quote(self.password, safe='')}"
        vhost = quote(self.vhost, safe="")
        return (f"{self.scheme}://{auth}@{host}:{port}/{vhost}"
                f"?heartbeat={self.heartbeat}")


def _address(text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; ValueError if malformed."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest
    else:
        host, _, port = text.partition(":")
    if not host or (port and not port.isdigit()):
        raise ValueError(f"bad host {text!r}: expected host, host:port or [ipv6]:port")
    number = int(port) if port else default_port
    if not 1 <= number <= 65535:
        raise ValueError(f"port {number} of host {text!r} is out of range 1-65535")
    return host, number


def parse_url(url: str) -> AmqpSettings:
    """Validate an ``amqp://`` URL; a bad option raises :class:`~tidings.ConfigurationError`."""
    parts = urlsplit(url)
    options: dict[str, object] = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    fields: dict[str, object] = {"scheme": parts.scheme, "vhost": unquote(path) or "/"}
    hosts = parts.netloc.rpartition("@")[2]
    default_port = 5671 if parts.scheme == "amqps" else 5672
    try:
        addresses = tuple(_address(h, default_port) for h in hosts.split(",")) if hosts \
            else ()
    except ValueError as exc:
        raise ConfigurationError(f"bad amqp:// URL {redact_url(url)!r}: {exc}") from None
    if addresses:
        fields["host"], fields["port"] = addresses[0]
        fields["addresses"] = addresses
    if parts.username is not None:
        fields["username"] = unquote(parts.username)
    if parts.password is not None:
        fields["password"] = unquote(parts.password)
    try:
        return AmqpSettings.model_validate({**fields, **options})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigurationError(f"bad amqp:// URL {redact_url(url)!r}: {problems}") from None
