"""Typed settings of the MQTT backend, read from the ``mqtt://`` URL and validated.

``mqtt://[user:password@]host:port[?option=value&...]``

Durations are seconds, like every other tidings backend.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..._errors import ConfigurationError
from ..._redact import redact_url

__all__ = ["MqttSettings", "parse_url"]

_MEMBER = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


class MqttSettings(BaseModel):
    """Every option of an ``mqtt://`` URL, with safe defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    #: A stable name for this process among the members of its groups. With it, the
    #: broker keeps the member's session (its unacknowledged and queued messages)
    #: while it is down, and a restart under the same name resumes it. Without it,
    #: each process gets a fresh session that ends when it disconnects.
    member: str | None = Field(default=None, pattern=_MEMBER.pattern)
    #: How long the broker keeps a named member's session after it disconnected.
    session_expiry: int = Field(default=3600, ge=0, le=4_294_967_295)
    connect_timeout: float = Field(default=5.0, gt=0, le=600)
    publish_timeout: float = Field(default=30.0, gt=0, le=3600)
    keepalive: int = Field(default=30, ge=5, le=65535)
    #: At most this many unacknowledged messages are sent to one subscriber at a time
    #: (MQTT 5 Receive Maximum) and kept unconfirmed by one publisher.
    receive_maximum: int = Field(default=1000, ge=1, le=65535)
    #: For this long after a connection is made again, a publish that the broker
    #: answers with "No matching subscribers", to a topic that had reached a
    #: subscriber before, is sent again (every 0.2 s): mosquitto
    #: does not restore shared subscriptions from its persistence file, so after a
    #: restart a group has no subscription until one of its members is back.
    restart_grace: float = Field(default=10.0, ge=0, le=600)

    @property
    def where(self) -> str:
        """The broker's URL for logs and errors: no password, no options."""
        if self.username is None:
            return f"mqtt://{self.host}:{self.port}"
        return redact_url(f"mqtt://{quote(self.username, safe='')}:{self.password or ''}@"
                          f"{self.host}:{self.port}")



def parse_url(url: str) -> MqttSettings:
    """Validate an ``mqtt://`` URL into :class:`MqttSettings`; a bad URL or option raises
    :class:`~tidings.ConfigurationError` naming it."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ConfigurationError(
            f"expected mqtt://[user:password@]host:port, got {redact_url(url)!r}")
    values: dict[str, Any] = {"host": parts.hostname}
    try:
        if parts.port is not None:
            values["port"] = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"bad port in {redact_url(url)!r}: {exc}") from None
    if parts.username:
        values["username"] = unquote(parts.username)
    if parts.password is not None:
        values["password"] = unquote(parts.password)
    for name, given in parse_qs(parts.query, keep_blank_values=True).items():
        values[name] = given[-1]
    try:
        return MqttSettings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'url'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigurationError(f"bad mqtt:// URL {redact_url(url)!r}: {problems}") from None
