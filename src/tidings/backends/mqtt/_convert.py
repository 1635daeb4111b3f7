"""Records to MQTT 5 messages and back.

Headers travel as MQTT 5 user properties, the key as the user property ``tidings-key``
and the publish time as ``tidings-timestamp``. mosquitto refuses control characters in
strings (a dead letter's error message may have newlines), so a value that has any
travels JSON-quoted, its name listed in ``tidings-quoted``. A request's reply topic and id also go
in MQTT 5's own Response Topic and Correlation Data, and a reply's correlation id in
Correlation Data, so an MQTT 5 client that knows nothing of tidings can request from a
tidings responder (its Response Topic and Correlation Data become tidings' headers).
"""

from __future__ import annotations

import json
import re
import struct
import time

from paho.mqtt.properties import Properties

from ..._message import Headers
from ..._records import OutRecord, Record
from ._wire import Delivery

__all__ = ["KEY", "TIMESTAMP", "PackedProperties", "properties_of", "record_of"]

KEY = "tidings-key"
TIMESTAMP = "tidings-timestamp"
QUOTED = "tidings-quoted"
_CONTROL = re.compile("[\x00-\x1f\x7f]")


class PackedProperties(Properties):
    """PUBLISH properties encoded once, by :func:`properties_of`: paho only calls
    ``pack()`` on them, and its own :class:`Properties` costs ~100 µs a message to
    build (a name lookup over every property name for each attribute set)."""

    def __init__(self, packed: bytes) -> None:  # no super().__init__: its tables
        object.__setattr__(self, "packed", packed)

    def pack(self) -> bytes:
        """The properties as they go on the wire (length first)."""
        packed: bytes = self.__dict__["packed"]
        return packed

    def __str__(self) -> str:
        return f"PackedProperties({len(self.pack())} bytes)"


def properties_of(record: OutRecord) -> PackedProperties:
    """The PUBLISH properties that carry ``record``'s key, headers and time."""
    headers = record.headers
    pairs = [(TIMESTAMP, f"{time.time():.6f}"), *headers.items()]
    quoted = [name for name, value in headers.items() if _CONTROL.search(value)]
    if quoted:
        pairs = [(k, json.dumps(v) if k in quoted else v) for k, v in pairs]
        pairs.append((QUOTED, ",".join(quoted)))
    if record.key is not None:
        pairs.append((KEY, record.key))
    body = bytearray()
    for name, value in pairs:
        body += b"\x26" + _string(name.encode()) + _string(value.encode())
    reply_to = headers.get(Headers.REPLY_TO)
    if reply_to is not None:  # a request
        body += b"\x08" + _string(reply_to.encode())
        body += b"\x09" + _string(headers.get(Headers.ID, "").encode())
    elif Headers.ID not in headers and Headers.CORRELATION_ID in headers:  # a reply
        body += b"\x09" + _string(headers[Headers.CORRELATION_ID].encode())
    return PackedProperties(_varint(len(body)) + bytes(body))


def _string(data: bytes) -> bytes:
    """An MQTT string or binary: two bytes of length, then the bytes."""
    return struct.pack("!H", len(data)) + data


def _varint(number: int) -> bytes:
    """An MQTT Variable Byte Integer."""
    out = bytearray()
    while True:
        number, digit = divmod(number, 128)
        out.append(digit | (0x80 if number else 0))
        if not number:
            return bytes(out)


def record_of(delivery: Delivery, offset: int) -> Record:
    """The record of a delivered message, at the subscription's sequence ``offset``."""
    headers = dict(delivery.user_properties)
    key = headers.pop(KEY, None)
    stamp = headers.pop(TIMESTAMP, None)
    quoted = headers.pop(QUOTED, None)
    if quoted:
        for name in quoted.split(","):
            if name in headers:
                headers[name] = _unquoted(headers[name])
    try:
        timestamp = float(stamp) if stamp is not None else time.time()
    except ValueError:
        timestamp = time.time()
    response = delivery.response_topic
    if response and Headers.REPLY_TO not in headers:  # a request from a plain MQTT client
        headers[Headers.REPLY_TO] = response
        data = delivery.correlation_data
        if data and Headers.ID not in headers:
            headers[Headers.ID] = data.decode(errors="replace")
    return Record(delivery.topic, 0, offset, key, delivery.payload, headers, timestamp)


def _unquoted(value: str) -> str:
    """A JSON-quoted header value as it was (from another client, maybe not quoted)."""
    try:
        found = json.loads(value)
    except ValueError:
        return value
    return found if isinstance(found, str) else value
