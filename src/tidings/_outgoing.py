"""From a payload to a record to append: validation, encoding and tidings' headers.

Used by ``App.publish`` and by the outbox, which builds the record inside the caller's
transaction and publishes it later, so both give a message the same id, content type,
correlation and causation.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from ._codec import JSON, encode
from ._errors import ConfigurationError
from ._ids import new_id
from ._message import Headers, current_message
from ._records import OutRecord

__all__ = ["RESERVED_PREFIX", "Delay", "check_headers", "check_name", "deliver_at",
           "make_record", "make_records"]

#: Headers whose name starts with this belong to the runtime (``Headers``); a caller
#: who could set them could forge a message id, a reply address or a dead-letter mark.
RESERVED_PREFIX = "tidings-"

Delay = float | timedelta | datetime | None
_delivery = current_message.var  # read directly first: most publishes have no parent
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


@functools.lru_cache(maxsize=4096)
def _valid(name: str) -> bool:
    return _NAME.match(name) is not None


def check_name(kind: str, name: str) -> str:
    """``name`` if it is a valid app, topic, queue or group name, else ConfigurationError."""
    if not isinstance(name, str) or not _valid(name):
        raise ConfigurationError(
            f"invalid {kind} name {name!r}: use 1-200 letters, digits, '.', '_' or '-'"
        )
    return name


def check_headers(headers: Mapping[str, str] | None) -> None:
    """Refuse (ConfigurationError) a caller's header in the reserved ``tidings-``
    namespace: only the runtime sets those."""
    if headers:
        for name in headers:
            if name not in _ALLOWED:
                _check_header(name)


#: Header names already checked (an app uses a few, again and again: a set lookup is
#: cheaper than looking at the name every time).
_ALLOWED: set[str] = set()


def _check_header(name: str) -> None:
    if name[:8].lower() == RESERVED_PREFIX:
        raise ConfigurationError(
            f"header {name!r} is reserved: names starting with {RESERVED_PREFIX!r} are set "
            "by tidings only"
        )
    if len(_ALLOWED) < 4096:
        _ALLOWED.add(name)


def deliver_at(delay: Delay) -> float | None:
    """Epoch seconds to deliver at: ``delay`` is seconds, a timedelta or an aware datetime."""
    if delay is None:
        return None
    if isinstance(delay, datetime):
        if delay.tzinfo is None:
            raise ConfigurationError("an absolute delivery time needs a timezone (aware datetime)")
        return delay.timestamp()
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
    # inf would never be delivered, and nan compares false to everything: at once.
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigurationError(f"delay must be a finite number >= 0 seconds, not {seconds}")
    return time.time() + seconds if seconds > 0 else None


def make_record(
    topic: str, payload: Any, key: str | None, headers: Mapping[str, str] | None,
    delay: Delay, partition: int | None, reserved: Mapping[str, str] | None = None,
) -> OutRecord:
    """The record for one message; every bad input fails here, before anything is sent.

    ``headers`` are the caller's: one in the reserved ``tidings-`` namespace is refused.
    ``reserved`` are the runtime's own (a cron tick's fixed id, a request's reply
    topic, an outbox row being relayed) and win over the caller's. A message published
    while a handler runs carries the handled message's correlation id and has its id as
    causation id. Headers written: the id always; the content type unless it is JSON;
    correlation and causation ids when there is a parent (or the runtime gave them).
    """
    check_name("topic", topic)
    _check_key(key)
    if headers:
        merged = {**headers}
        for name in merged:  # check_headers, inline: this runs once per publish
            if name not in _ALLOWED:
                _check_header(name)
    else:
        merged = {}
    value, content_type = encode(payload)
    if reserved:
        merged.update(reserved)
    if Headers.ID not in merged:
        merged[Headers.ID] = new_id()
    _add_headers(merged, content_type, _parent())
    return OutRecord(topic, value, key, merged, partition,
                     deliver_at(delay) if delay is not None else None)


def make_records(
    topic: str, payloads: Iterable[Any], key: Callable[[Any], str | None] | None,
) -> list[OutRecord]:
    """``make_record`` for many payloads to one topic, without headers, delays or chosen
    partitions (``publish_many``): the topic is checked once, and the common record,
    a JSON payload with no parent, costs a dict and the record."""
    check_name("topic", topic)
    parent = _parent()
    records = []
    for payload in payloads:
        record_key = key(payload) if key is not None else None
        if record_key is not None and type(record_key) is not str:
            _check_key(record_key)
        value, content_type = encode(payload)
        headers = {Headers.ID: new_id()}
        if content_type is not JSON or parent is not None:
            _add_headers(headers, content_type, parent)
        records.append(OutRecord(topic, value, record_key, headers))
    return records


def _check_key(key: object) -> None:
    if key is not None and not isinstance(key, str):
        raise ConfigurationError(f"a message key is a str or None, not {type(key).__name__}")


def _parent() -> tuple[str, str] | None:
    """``(id, correlation id)`` of the message being handled, if any."""
    return current_message.ids() if _delivery.get() is not None else None


def _add_headers(headers: dict[str, str], content_type: str,
                 parent: tuple[str, str] | None) -> None:
    """The headers written only when they say something (each costs the Kafka client
    ~1 us): JSON is the default content type, and a message that starts a conversation
    is its own correlation id (``Message.correlation_id`` falls back to ``Message.id``)."""
    if content_type is not JSON:
        headers.setdefault(Headers.CONTENT_TYPE, content_type)
    if parent is not None:
        headers.setdefault(Headers.CORRELATION_ID, parent[1])
        headers.setdefault(Headers.CAUSATION_ID, parent[0])
