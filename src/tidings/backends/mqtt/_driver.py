"""paho's client with the two hot spots of a delivery done here instead.

- **Decoding a PUBLISH**: paho builds a generic ``Properties`` (and a message object
  with a lock) for each delivery; :func:`~._wire.decode_publish` reads it into one
  small :class:`~._wire.Delivery`, handed straight to ``deliver``.
- **A PUBACK** that says only "success" (two bytes: its packet id) goes to paho's
  bookkeeping without paho building a reason code and an empty ``Properties`` for it.
- **Reading the socket**: paho reads each packet's first bytes one ``recv`` at a time
  (three or four system calls a packet); here a ``recv`` takes whatever has arrived,
  and paho's reads are served from that buffer.

These hook three of paho's private methods (``_handle_publish``, ``_handle_pubackcomp``
and ``_sock_recv``), as
they are in paho-mqtt 2.1 and 2.2; ``tests/backends/test_mqtt_wire.py`` checks that
they still exist and are used.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ._wire import Delivery, decode_publish

__all__ = ["Driver"]

log = logging.getLogger("tidings.mqtt")

#: What one ``recv`` asks for.
_CHUNK = 256 * 1024
_U16 = struct.Struct("!H")
#: What every plain PUBACK reports (shared: callbacks read them, nobody changes them).
_SUCCESS = ReasonCode(PacketTypes.PUBACK)
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]


class Driver(paho.Client):
    """A paho client (MQTT 5, no TLS) whose deliveries go to :attr:`deliver`."""

    #: ``(delivery)``: called for each PUBLISH received (set before connecting).
    deliver: Callable[[Delivery], None] | None = None
    _buffer = b""
    _at = 0

    @property
    def buffered(self) -> bool:
        """Whether bytes already read from the socket wait for paho."""
        return self._at < len(self._buffer)

    def sent(self, mid: int) -> tuple[str, bytes, Properties | None] | None:
        """The topic, payload and properties of unconfirmed publish ``mid``, if any."""
        message = self._out_messages.get(mid)
        if message is None:
            return None
        return message.topic, bytes(message.payload), message.properties

    def forget_buffer(self) -> None:
        """Drop what was read ahead (the socket is being replaced)."""
        self._buffer, self._at = b"", 0

    def _sock_recv(self, bufsize: int) -> bytes:
        at, buffer = self._at, self._buffer
        if at >= len(buffer):
            buffer = super()._sock_recv(max(bufsize, _CHUNK))  # may raise BlockingIOError
            if len(buffer) <= bufsize:  # taken whole: nothing to keep
                self._buffer, self._at = b"", 0
                return buffer
            self._buffer, at = buffer, 0
        self._at = at + bufsize
        return buffer[at:at + bufsize]

    def _handle_publish(self) -> MQTTErrorCode:
        packet = self._in_packet
        delivery = decode_publish(packet["command"], packet["packet"])
        if delivery.qos == 2:  # tidings subscribes at QoS 1: the broker may not upgrade
            raise MalformedPacket("a QoS 2 PUBLISH on a QoS 1 subscription")
        if self.deliver is not None:
            try:
                self.deliver(delivery)
            except Exception:  # raised through paho, it would leave it mid-packet
                log.exception("%s: a delivery on %r was not taken in (it stays "
                              "unacknowledged)", self._client_id.decode(errors="replace"),
                              delivery.topic)
        if delivery.qos == 1 and not self._manual_ack:
            return self._send_puback(delivery.mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        if cmd != "PUBACK" or len(packet) != 2:  # a reason code or properties: paho's way
            return super()._handle_pubackcomp(cmd)
        (mid,) = _U16.unpack(packet)
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, _SUCCESS, _NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS
