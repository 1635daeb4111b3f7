"""Typed settings of the RabbitMQ backend, read from the ``amqp://`` URL and validated.

``amqp://user:password@host:port/vhost[?option=value&...]`` (``amqps://`` for TLS). The
vhost is the URL's path, percent-encoded (``/`` is ``%2F``; an empty path is ``/``).
Durations are seconds, like every other tidings backend.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..._errors import ConfigurationError

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

    def connection_url(self) -> str:
        """The URL aiormq connects with (without tidings' own options)."""
        from urllib.parse import quote

        auth = f"{quote(self.username, safe='')}:{quote(self.password, safe='')}"
        vhost = quote(self.vhost, safe="")
        return (f"{self.scheme}://{auth}@{self.host}:{self.port}/{vhost}"
                f"?heartbeat={self.heartbeat}")


def parse_url(url: str) -> AmqpSettings:
    """Validate an ``amqp://`` URL; a bad option raises :class:`~tidings.ConfigurationError`."""
    parts = urlsplit(url)
    options: dict[str, object] = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    fields: dict[str, object] = {"scheme": parts.scheme, "vhost": unquote(path) or "/"}
    try:
        if parts.hostname:
            fields["host"] = parts.hostname
        if parts.port:
            fields["port"] = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"bad amqp:// URL {_safe(url)!r}: {exc}") from None
    if parts.username is not None:
        fields["username"] = unquote(parts.username)
    if parts.password is not None:
        fields["password"] = unquote(parts.password)
    try:
        return AmqpSettings.model_validate({**fields, **options})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigurationError(f"bad amqp:// URL {_safe(url)!r}: {problems}") from None


def _safe(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)
