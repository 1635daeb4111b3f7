"""The mqtt:// backend's wire format, checked against paho's own encoder and decoder
(no broker): what tidings sends, paho reads; what paho sends, tidings reads."""

from __future__ import annotations

import socket
import struct

import paho.mqtt.client as paho
import pytest
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tidings import ConfigurationError
from tidings._records import OutRecord
from tidings.backends.mqtt._convert import properties_of, record_of
from tidings.backends.mqtt._driver import Driver
from tidings.backends.mqtt._settings import parse_url
from tidings.backends.mqtt._wire import Delivery, decode_publish


def _packet(topic: str, payload: bytes, props: bytes, *, mid: int | None = 1,
            ) -> tuple[int, bytes]:
    """A PUBLISH's first byte and what follows its remaining length."""
    body = struct.pack("!H", len(topic.encode())) + topic.encode()
    if mid is not None:
        body += struct.pack("!H", mid)
    return (0x32 if mid is not None else 0x30), body + props + payload


def _delivered(record: OutRecord) -> Delivery:
    """``record`` as a subscriber receives it (through tidings' own decoder), after
    checking that paho's decoder reads its properties alike."""
    packed = properties_of(record).pack()
    theirs = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    theirs.unpack(packed)  # type: ignore[no-untyped-call]
    delivery = decode_publish(*_packet(record.topic, record.value, packed))
    assert delivery.user_properties == list(getattr(theirs, "UserProperty", []))
    assert delivery.response_topic == getattr(theirs, "ResponseTopic", None)
    assert delivery.correlation_data == getattr(theirs, "CorrelationData", None)
    return delivery


def _plain(props: Properties, *, payload: bytes = b"5") -> Delivery:
    """A PUBLISH whose properties paho encoded, as tidings decodes it."""
    return decode_publish(*_packet("calc", payload, props.pack()))  # type: ignore[no-untyped-call]


def test_key_headers_and_control_characters_round_trip() -> None:
    headers = {"tidings-id": "abc", "trace": "t", "tidings-dlq-error-message": "a\nb\tc",
               "ünïcode": "✓ " * 300}
    record = record_of(_delivered(OutRecord("t", b"{}", key="k", headers=headers)), 7)
    assert (record.key, record.offset, record.partition, record.value) == ("k", 7, 0, b"{}")
    assert record.headers == headers


def test_requests_and_replies_carry_mqtt5_response_topic_and_correlation_data() -> None:
    request = _delivered(OutRecord("calc", b"1", headers={
        "tidings-id": "req-1", "tidings-reply-to": "tidings.replies"}))
    assert request.response_topic == "tidings.replies"
    assert request.correlation_data == b"req-1"
    reply = _delivered(OutRecord("tidings.replies", b"2",
                                 headers={"tidings-correlation-id": "req-1"}))
    assert reply.correlation_data == b"req-1"


def test_a_plain_mqtt5_request_becomes_a_tidings_request() -> None:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ResponseTopic, props.CorrelationData = "their/replies", b"c-9"
    record = record_of(_plain(props), 0)
    assert record.headers == {"tidings-reply-to": "their/replies", "tidings-id": "c-9"}
    assert (record.key, record.value) == (None, b"5")


def test_every_publish_property_a_plain_client_may_send_is_read() -> None:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.PayloadFormatIndicator = 1
    props.MessageExpiryInterval = 60
    props.ContentType = "application/json"
    props.SubscriptionIdentifier = 300
    props.UserProperty = [("a", "1"), ("a", "2"), ("", "")]
    delivery = _plain(props, payload=b"")
    assert (delivery.topic, delivery.mid, delivery.qos, delivery.payload) == ("calc", 1, 1, b"")
    assert delivery.content_type == "application/json"
    assert delivery.user_properties == [("a", "1"), ("a", "2"), ("", "")]
    assert record_of(delivery, 0).headers == {"a": "2", "": ""}


def test_a_qos0_publish_without_properties() -> None:
    delivery = decode_publish(*_packet("t/x", b"\x00" * 300, b"\x00", mid=None))
    assert (delivery.topic, delivery.mid, delivery.qos, delivery.payload) == (
        "t/x", 0, 0, b"\x00" * 300)
    assert delivery.user_properties == []


def test_a_large_property_block_and_payload() -> None:
    record = OutRecord("big", b"x" * 100_000, headers={f"h{i}": "v" * 200 for i in range(200)})
    delivery = _delivered(record)
    assert delivery.payload == record.value
    assert record_of(delivery, 0).headers == record.headers


@pytest.mark.parametrize(("header", "packet", "why"), [
    (0x32, b"", "empty"),
    (0x32, b"\x00\x05ab", "topic runs past"),
    (0x32, b"\x00\x00\x00\x01\x00", "no topic (no aliases granted)"),
    (0x32, b"\x00\x01t\x00", "no packet id"),
    (0x32, b"\x00\x01t\x00\x01\x05\x26\x00\x01a", "properties run past"),
    (0x32, b"\x00\x01t\x00\x01\x03\x26\x00\x05abc", "user property runs past"),
    (0x32, b"\x00\x01t\x00\x01\x02\x11\x00", "property not allowed in PUBLISH"),
    (0x32, b"\x00\x01t\x00\x01\x02\x02\x00", "fixed property cut short"),
    (0x32, b"\x00\x01t\x00\x01\xff\xff\xff\xff\x01", "five-byte varint"),
    (0x32, b"\x00\x02\xff\xfe\x00\x01\x00", "topic not UTF-8"),
    (0x36, b"\x00\x01t\x00\x01\x00", "QoS 3"),
])
def test_malformed_publishes_are_refused(header: int, packet: bytes, why: str) -> None:
    with pytest.raises(MalformedPacket):
        decode_publish(header, packet)


def test_the_paho_methods_the_driver_replaces_are_still_there() -> None:
    """The driver hooks three private methods of paho's client: a paho release that
    renames them would silently bring back the slow path; this test says so."""
    for name in ("_handle_publish", "_handle_pubackcomp", "_sock_recv"):
        assert name in vars(paho.Client), f"paho.Client.{name} is gone"
        assert name in vars(Driver)


def test_url_options_are_typed_and_the_password_never_echoed() -> None:
    settings = parse_url("mqtt://u%40x:p%3Aw@host:1884?member=a-1&session_expiry=60")
    assert (settings.host, settings.port, settings.username, settings.password) == (
        "host", 1884, "u@x", "p:w")
    assert (settings.member, settings.session_expiry) == ("a-1", 60)
    with pytest.raises(ConfigurationError) as info:
        parse_url("mqtt://u:hunter2@host:1883?keepalive=1")
    assert "keepalive" in str(info.value) and "hunter2" not in str(info.value)


@pytest.mark.parametrize("chunk", [1, 7, 256 * 1024])
def test_the_driver_reads_ahead_without_losing_or_splitting_packets(
        chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Packets that arrive together, or cut anywhere, come out whole and in order."""
    from paho.mqtt.enums import CallbackAPIVersion

    import tidings.backends.mqtt._driver as driver_module

    monkeypatch.setattr(driver_module, "_CHUNK", chunk)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    got: list[Delivery] = []
    driver = Driver(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, manual_ack=True)
    driver.deliver = got.append
    driver._sock = ours
    try:
        wire = b""
        for n in range(50):
            header, body = _packet(f"t{n}", b"p" * (n * 7), properties_of(
                OutRecord(f"t{n}", b"", headers={"n": str(n)})).pack(), mid=n + 1)
            wire += bytes([header]) + _remaining(len(body)) + body
        theirs.sendall(wire[:len(wire) // 3])
        _read_all(driver)
        theirs.sendall(wire[len(wire) // 3:])
        _read_all(driver)
        assert [(d.topic, d.mid, len(d.payload)) for d in got] == [
            (f"t{n}", n + 1, n * 7) for n in range(50)]
        assert [d.user_properties[-1] for d in got] == [("n", str(n)) for n in range(50)]
    finally:
        driver._sock = None
        ours.close()
        theirs.close()


def _remaining(length: int) -> bytes:
    out = bytearray()
    while True:
        length, digit = divmod(length, 128)
        out.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(out)


def _read_all(driver: Driver) -> None:
    """Read until neither the socket nor the driver's buffer has a byte left."""
    for _ in range(100_000):
        assert driver.loop_read() == paho.MQTT_ERR_SUCCESS
        try:
            pending = driver.buffered or bool(driver._sock.recv(1, socket.MSG_PEEK))
        except BlockingIOError:
            pending = False
        if not pending:
            return
    raise AssertionError("the driver keeps reading")


def test_the_broker_is_shown_in_logs_and_errors_without_its_password() -> None:
    assert parse_url("mqtt://u%40x:hun%3Ater2@host:1884").where == "mqtt://u%40x:***@host:1884"
    assert parse_url("mqtt://host").where == "mqtt://host:1883"
    assert parse_url("mqtt://host?restart_grace=0").restart_grace == 0
    with pytest.raises(ConfigurationError, match="restart_grace"):
        parse_url("mqtt://host?restart_grace=-1")


def test_a_failing_delivery_callback_is_logged_and_the_next_packets_still_read(
        caplog: pytest.LogCaptureFixture) -> None:
    from paho.mqtt.enums import CallbackAPIVersion

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    got: list[str] = []

    def deliver(delivery: Delivery) -> None:
        if delivery.topic == "bad":
            raise RuntimeError("boom")
        got.append(delivery.topic)

    driver = Driver(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, manual_ack=True)
    driver.deliver = deliver
    driver._sock = ours
    try:
        wire = b""
        for n, topic in enumerate(("ok-1", "bad", "ok-2")):
            header, body = _packet(topic, b"x", b"\x00", mid=n + 1)
            wire += bytes([header]) + _remaining(len(body)) + body
        theirs.sendall(wire)
        _read_all(driver)
    finally:
        driver._sock = None
        ours.close()
        theirs.close()
    assert got == ["ok-1", "ok-2"]
    assert any("'bad' was not taken in" in r.getMessage() for r in caplog.records)
