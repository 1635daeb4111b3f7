"""The PUBLISH packets tidings receives, decoded here rather than by paho.

paho decodes every MQTT 5 property of a delivery through its generic ``Properties``
class (a name lookup per property, several objects per message): with the user
properties a tidings message carries, that costs more CPU than the rest of the delivery
together. This decoder reads only what a PUBLISH may hold (MQTT 5.0, section 3.3) into
one small :class:`Delivery`; anything else, or a length that does not add up, raises
paho's ``MalformedPacket``, which paho answers as it does its own decoding errors (it
drops the connection as a protocol error).
"""

from __future__ import annotations

import struct

from paho.mqtt.exception import MalformedPacket

__all__ = ["Delivery", "decode_publish"]

_U16 = struct.Struct("!H")

# PUBLISH property identifiers (MQTT 5.0, 2.2.2.2).
_PAYLOAD_FORMAT = 0x01
_MESSAGE_EXPIRY = 0x02
_CONTENT_TYPE = 0x03
_RESPONSE_TOPIC = 0x08
_CORRELATION_DATA = 0x09
_SUBSCRIPTION_ID = 0x0B
_TOPIC_ALIAS = 0x23
_USER_PROPERTY = 0x26
#: Properties of fixed width: identifier -> bytes.
_FIXED = {_PAYLOAD_FORMAT: 1, _MESSAGE_EXPIRY: 4, _TOPIC_ALIAS: 2}


class Delivery:
    """A received PUBLISH: what a subscription needs of it, nothing decoded twice."""

    __slots__ = ("content_type", "correlation_data", "dup", "mid", "payload", "qos",
                 "response_topic", "topic", "user_properties")

    def __init__(self, topic: str, payload: bytes, *, mid: int = 0, qos: int = 1,
                 dup: bool = False, user_properties: list[tuple[str, str]] | None = None,
                 response_topic: str | None = None, correlation_data: bytes | None = None,
                 content_type: str | None = None) -> None:
        self.topic = topic
        self.payload = payload
        self.mid = mid
        self.qos = qos
        self.dup = dup
        self.user_properties = user_properties if user_properties is not None else []
        self.response_topic = response_topic
        self.correlation_data = correlation_data
        self.content_type = content_type

    def __repr__(self) -> str:
        return (f"Delivery(topic={self.topic!r}, mid={self.mid}, qos={self.qos}, "
                f"{len(self.payload)} bytes, {len(self.user_properties)} user properties)")


def decode_publish(header: int, packet: bytes | bytearray) -> Delivery:
    """Decode a PUBLISH: ``header`` is its first byte, ``packet`` what follows the
    remaining length. Raises ``MalformedPacket`` if it is not a valid MQTT 5 PUBLISH."""
    try:
        return _decode(header, memoryview(packet))
    except (struct.error, UnicodeDecodeError, IndexError) as exc:
        raise MalformedPacket(f"malformed PUBLISH: {exc}") from None


def _decode(header: int, data: memoryview) -> Delivery:
    qos = (header >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    end = len(data)
    topic, at = _string(data, 0)
    if not topic:  # tidings grants no topic aliases: a PUBLISH must name its topic
        raise MalformedPacket("PUBLISH without a topic name")
    mid = 0
    if qos:
        (mid,) = _U16.unpack_from(data, at)
        at += 2
    length, at = _varint(data, at)
    stop = at + length
    if stop > end:
        raise MalformedPacket("PUBLISH properties run past the packet")
    delivery = Delivery(topic, b"", mid=mid, qos=qos, dup=bool(header & 0x08))
    while at < stop:
        at = _property(data, at, delivery)
    if at != stop:
        raise MalformedPacket("PUBLISH properties do not add up to their length")
    delivery.payload = bytes(data[stop:])
    return delivery


def _property(data: memoryview, at: int, delivery: Delivery) -> int:
    """Read the property at ``at`` into ``delivery``; return where the next one starts."""
    ident = data[at]
    at += 1
    if ident == _USER_PROPERTY:
        name, at = _string(data, at)
        value, at = _string(data, at)
        delivery.user_properties.append((name, value))
    elif ident == _RESPONSE_TOPIC:
        delivery.response_topic, at = _string(data, at)
    elif ident == _CORRELATION_DATA:
        (size,) = _U16.unpack_from(data, at)
        delivery.correlation_data = bytes(data[at + 2:at + 2 + size])
        at += 2 + size
    elif ident == _CONTENT_TYPE:
        delivery.content_type, at = _string(data, at)
    elif ident == _SUBSCRIPTION_ID:
        _, at = _varint(data, at)
    elif ident in _FIXED:
        at += _FIXED[ident]
    else:
        raise MalformedPacket(f"property 0x{ident:02x} is not allowed in a PUBLISH")
    if at > len(data):
        raise MalformedPacket("a PUBLISH property runs past the packet")
    return at


def _string(data: memoryview, at: int) -> tuple[str, int]:
    """An MQTT UTF-8 string at ``at`` and the position after it."""
    (size,) = _U16.unpack_from(data, at)
    start = at + 2
    if start + size > len(data):
        raise MalformedPacket("a PUBLISH string runs past the packet")
    return str(data[start:start + size], "utf-8"), start + size


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    """An MQTT Variable Byte Integer (at most four bytes) and the position after it."""
    value, shift = 0, 0
    for _ in range(4):
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
    raise MalformedPacket("a Variable Byte Integer longer than four bytes")
