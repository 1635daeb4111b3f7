"""One MQTT 5 connection, driven by the asyncio loop: paho's client without its thread.

paho-mqtt 2.x does the protocol; its socket is read and written from this loop's
reader and writer callbacks (as aiomqtt does), so every paho callback runs on the loop.
A lost connection is re-made in the background with the same client id (capped
backoff, reported to the transport's :class:`~._outage.Outage`); paho sends its
unconfirmed publishes again, and the broker its unacknowledged deliveries. Received
PUBLISH packets are decoded by :class:`~._driver.Driver`, not by paho.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ..._errors import BrokerUnavailableError, TransportError
from ._driver import Driver
from ._outage import Outage
from ._settings import MqttSettings
from ._translate import connect_error, publish_error
from ._wire import Delivery

__all__ = ["Connection"]

#: The PUBACK reason "No matching subscribers" (MQTT 5.0, 3.4.2.1): accepted, sent nowhere.
_NO_SUBSCRIBERS = 0x10
_UNSPECIFIED = 0x80

#: ``(delivery)``: a delivery, on the loop; acknowledge it later with ``ack(delivery.mid)``.
OnMessage = Callable[[Delivery], None]
#: ``(up)``: the connection was lost (False) or made again (True), on the loop.
OnState = Callable[[bool], None]


class Connection:
    """An MQTT 5 client connection with futures for CONNACK, PUBACK and SUBACK."""

    def __init__(self, settings: MqttSettings, client_id: str, *, persistent: bool,
                 outage: Outage | None = None, on_message: OnMessage | None = None,
                 on_state: OnState | None = None) -> None:
        self.settings = settings
        self.client_id = client_id
        self.persistent = persistent
        self.outage = outage if outage is not None else Outage(settings.where)
        self.max_packet: int | None = None  # the broker's Maximum Packet Size, if it said
        self._on_state = on_state
        self._loop = asyncio.get_running_loop()
        self._client = client = Driver(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5,
            manual_ack=on_message is not None, reconnect_on_failure=False,
        )
        # paho's own window rescans every unconfirmed message on each PUBACK (quadratic);
        # the window is kept here instead (``full``/``room``), at the broker's maximum.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._written
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        client.on_publish = self._published
        client.on_subscribe = self._subscribed
        client.deliver = on_message
        self._connack: asyncio.Future[bool] | None = None
        #: Unconfirmed publishes: packet id -> (future, topic).
        self._pubacks: dict[int, tuple[asyncio.Future[None], str]] = {}
        #: Topics whose publishes reached a subscriber (see ``_published``).
        self._matched: set[str] = set()
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._send_maximum = 65535  # the broker's Receive Maximum (from its CONNACK)
        self._roomy = asyncio.Event()
        self._closing = False
        self._back_at = float("-inf")  # when the connection was last made again
        self._regrouping: set[asyncio.Future[None]] = set()  # publishes sent again later
        self.connected = False

    @property
    def where(self) -> str:
        """The broker's address (no password), for logs and error messages."""
        return self.settings.where

    # -- connecting ----------------------------------------------------------------

    async def connect(self) -> bool:
        """Connect within the connect timeout; True when the broker resumed a session.
        Raises :class:`~tidings.BrokerUnavailableError`, or
        :class:`~tidings.ConfigurationError` when the broker refuses the credentials."""
        timeout = self.settings.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                await self._reachable()
                present = await self._handshake(first=True)
        except TimeoutError:
            self._abort()
            raise BrokerUnavailableError(
                f"{self.where}: no answer within {timeout:g} s (connect_timeout)"
            ) from None
        except BaseException:
            self._abort()
            raise
        self._ticker = asyncio.create_task(self._tick(), name="tidings-mqtt-keepalive")
        return present

    async def _reachable(self) -> None:
        """Open (and close) a TCP connection first: paho's own connect blocks."""
        try:
            _, writer = await asyncio.open_connection(self.settings.host, self.settings.port)
        except OSError as exc:
            raise BrokerUnavailableError(f"{self.where}: {exc.strerror or exc}") from None
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def _handshake(self, *, first: bool) -> bool:
        self._connack = self._loop.create_future()
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.ReceiveMaximum = self.settings.receive_maximum
        if self.persistent:
            properties.SessionExpiryInterval = self.settings.session_expiry
        try:
            if first:
                self._client.connect(
                    self.settings.host, self.settings.port, self.settings.keepalive,
                    clean_start=not self.persistent, properties=properties,
                )
            else:
                self._client.reconnect()
        except (TimeoutError, OSError) as exc:
            raise BrokerUnavailableError(f"{self.where}: {exc}") from None
        return await self._connack

    def _connected(self, _c: paho.Client, _u: Any, flags: paho.ConnectFlags,
                   reason: ReasonCode, properties: Properties | None) -> None:
        future = self._connack
        if reason.is_failure:
            if future is not None and not future.done():
                future.set_exception(connect_error(self.where, reason))
            return
        self.connected = True
        limit = getattr(properties, "MaximumPacketSize", None)
        self.max_packet = int(limit) if limit else None
        self._send_maximum = min(int(getattr(properties, "ReceiveMaximum", 65535)),
                                 self.settings.receive_maximum)
        if future is not None and not future.done():
            future.set_result(bool(flags.session_present))

    def _disconnected(self, _c: paho.Client, _u: Any, _f: paho.DisconnectFlags,
                      reason: ReasonCode, _p: Properties | None) -> None:
        was = self.connected
        self.connected = False
        future = self._connack
        if future is not None and not future.done():
            future.set_exception(BrokerUnavailableError(f"{self.where}: {reason}"))
        if self._closing:
            return
        for ack in self._subacks.values():
            if not ack.done():
                ack.set_exception(BrokerUnavailableError(f"{self.where}: connection lost"))
        if was:
            # paho says "Unspecified error" when the socket closed without a DISCONNECT.
            said = "connection lost" if reason.value == _UNSPECIFIED else f"broker said {reason}"
            self.outage.lost(self.client_id, said)  # logs the first loss only
            if self._on_state is not None:
                self._on_state(False)
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """Connect again, 0.1 s after the loss then at twice the interval, at most every
        2 s (no log line per attempt: :class:`~._outage.Outage` logs the outage)."""
        delay = 0.1
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                async with asyncio.timeout(self.settings.connect_timeout):
                    await self._reachable()
                    await self._handshake(first=False)
            except (TransportError, TimeoutError):
                delay = min(delay * 2, 2.0)
                continue
            self._back_at = self._loop.time()
            self.outage.back(self.client_id)
            if self._on_state is not None:
                self._on_state(True)
            return

    # -- the socket, on the loop ---------------------------------------------------

    def _socket_open(self, client: paho.Client, _u: Any, sock: Any) -> None:
        self._client.forget_buffer()
        self._loop.add_reader(sock, self._readable, client, sock)

    def _readable(self, client: paho.Client, sock: Any) -> None:
        """Read every packet that has arrived, not paho's one per call: a fetch woken by
        the first delivery would otherwise run before the rest of a burst is read, and
        get one record per fetch (batches of one)."""
        driver = self._client
        for _ in range(self.settings.receive_maximum):
            if client.loop_read() != paho.MQTT_ERR_SUCCESS or client.socket() is not sock:
                return
            if not driver.buffered and not _has_bytes(sock):
                return
        if driver.buffered:  # read ahead, and the socket may not wake the loop again
            self._loop.call_soon(self._readable, client, sock)

    def _socket_close(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self._client.forget_buffer()
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)

    def _want_write(self, client: paho.Client, _u: Any, sock: Any) -> None:
        self._loop.add_writer(sock, client.loop_write)

    def _written(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self._loop.remove_writer(sock)

    async def _tick(self) -> None:
        """Keepalive pings and retries: paho's ``loop_misc``, once a second."""
        while True:
            await asyncio.sleep(1.0)
            if self.connected:
                self._client.loop_misc()

    # -- publishing, subscribing, acknowledging --------------------------------------

    def publish(self, topic: str, payload: bytes, properties: Properties | None,
                ) -> asyncio.Future[None]:
        """Send at QoS 1; the future completes on the broker's PUBACK."""
        future: asyncio.Future[None] = self._loop.create_future()
        self._track(future, topic, self._client.publish(topic, payload, qos=1,
                                                        properties=properties))
        return future

    def _track(self, future: asyncio.Future[None], topic: str,
               info: paho.MQTTMessageInfo) -> None:
        """Complete ``future`` on the PUBACK of ``info`` (paho keeps what it could not
        send yet, and sends it once connected again)."""
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            future.set_exception(publish_error(self.where, topic, None, info.rc))
        else:
            self._pubacks[info.mid] = (future, topic)

    @property
    def full(self) -> bool:
        """Whether as many publishes wait for their PUBACK as the broker allows."""
        return len(self._pubacks) + len(self._regrouping) >= self._send_maximum

    async def room(self) -> None:
        """Wait until another publish may be sent."""
        while self.full and not self._closing:
            self._roomy.clear()
            await self._roomy.wait()

    def _published(self, _c: paho.Client, _u: Any, mid: int, reason: ReasonCode,
                   _p: Properties) -> None:
        entry = self._pubacks.pop(mid, None)
        self._roomy.set()
        if entry is None:
            return
        future, topic = entry
        if reason.value == _NO_SUBSCRIBERS:
            # A topic that had subscribers, just after a reconnect: the broker may have
            # restarted without the group's subscriptions. Wait for them (restart_grace).
            if topic in self._matched and self._in_grace() and not future.done():
                self._send_again(future, mid)
                return
        elif not reason.is_failure:
            self._matched.add(topic)
        if future.done():
            return
        if reason.is_failure:
            future.set_exception(publish_error(self.where, "", reason, None))
        else:
            future.set_result(None)

    async def subscribe(self, filters: list[str]) -> None:
        """Subscribe to ``filters`` at QoS 1; raise if the broker refuses one."""
        result, mid = self._client.subscribe([(f, 1) for f in filters])
        if result != paho.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerUnavailableError(f"{self.where}: cannot subscribe ({result})")
        future: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        self._subacks[mid] = future
        async with asyncio.timeout(self.settings.connect_timeout):
            codes = await future
        refused = [f for f, code in zip(filters, codes, strict=False) if code.is_failure]
        if refused:
            raise TransportError(f"{self.where} refused the subscription to {refused}")

    def _subscribed(self, _c: paho.Client, _u: Any, mid: int, codes: list[ReasonCode],
                    _p: Properties | None) -> None:
        future = self._subacks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(codes)

    def _in_grace(self) -> bool:
        return self._loop.time() - self._back_at < self.settings.restart_grace

    def _send_again(self, future: asyncio.Future[None], mid: int) -> None:
        """Publish ``mid``'s message again in a moment: the broker came back without
        the group subscriptions it had (see ``restart_grace``)."""
        sent = self._client.sent(mid)
        if sent is None:  # not paho's to give back: take the broker's word
            future.set_result(None)
            return
        topic, payload, properties = sent
        self._regrouping.add(future)

        def again() -> None:
            self._regrouping.discard(future)
            self._roomy.set()
            if not future.done() and not self._closing:
                self._track(future, topic, self._client.publish(topic, payload, qos=1,
                                                                properties=properties))

        self._loop.call_later(0.2, again)

    def ack(self, mid: int) -> None:
        """Send the PUBACK of a delivery: the broker forgets the message."""
        self._client.ack(mid, 1)

    # -- closing -------------------------------------------------------------------

    async def close(self) -> None:
        """Wait (up to the publish timeout) for unconfirmed publishes, then DISCONNECT."""
        if self._closing:
            return
        pending = [f for f, _ in self._pubacks.values() if not f.done()]
        pending += [f for f in self._regrouping if not f.done()]
        if pending and self.connected:
            await asyncio.wait(pending, timeout=self.settings.publish_timeout)
        self._closing = True
        if self.connected:
            self._client.disconnect()
            with contextlib.suppress(OSError):
                self._client.loop_write()
        self._abort()

    def abandon(self) -> None:
        """Drop the socket without DISCONNECT, as a crashed process would."""
        self._closing = True
        self._abort()

    def _abort(self) -> None:
        self._closing = True
        self.outage.forget(self.client_id)
        for task in (self._ticker, self._reconnecting):
            if task is not None:
                task.cancel()
        sock = self._client.socket()
        if sock is not None:
            self._socket_close(self._client, None, sock)
            with contextlib.suppress(OSError):
                sock.close()
        self.connected = False
        error = BrokerUnavailableError(f"{self.where}: connection closed")
        futures: list[asyncio.Future[Any]] = [f for f, _ in self._pubacks.values()]
        futures += [*self._subacks.values(), *self._regrouping]
        for future in futures:
            if not future.done():
                future.set_exception(error)
        self._pubacks.clear()
        self._subacks.clear()
        self._regrouping.clear()
        self._roomy.set()


def _has_bytes(sock: Any) -> bool:
    """Whether the (non-blocking) socket has bytes to read now; at its end, False: the
    next readable event lets paho see the end. A peek, not select(), which fails for
    descriptors past FD_SETSIZE."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except (OSError, ValueError):  # BlockingIOError: nothing yet
        return False
