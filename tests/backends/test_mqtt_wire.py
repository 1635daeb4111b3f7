"""The mqtt:// backend's wire format, checked against paho's own decoder (no broker)."""

from __future__ import annotations

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tidings import ConfigurationError
from tidings._records import OutRecord
from tidings.backends.mqtt._convert import properties_of, record_of
from tidings.backends.mqtt._settings import parse_url


def _delivered(record: OutRecord) -> paho.MQTTMessage:
    """``record`` as a subscriber's paho would hand it over."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.unpack(properties_of(record).pack())  # type: ignore[no-untyped-call]
    message = paho.MQTTMessage(mid=1, topic=record.topic.encode())
    message.payload, message.properties = record.value, props
    return message


def test_key_headers_and_control_characters_round_trip() -> None:
    headers = {"tidings-id": "abc", "trace": "t", "tidings-dlq-error-message": "a\nb\tc",
               "ünïcode": "✓ " * 300}
    record = record_of(_delivered(OutRecord("t", b"{}", key="k", headers=headers)), 7)
    assert (record.key, record.offset, record.partition, record.value) == ("k", 7, 0, b"{}")
    assert record.headers == headers


def test_requests_and_replies_carry_mqtt5_response_topic_and_correlation_data() -> None:
    request = _delivered(OutRecord("calc", b"1", headers={
        "tidings-id": "req-1", "tidings-reply-to": "tidings.replies"}))
    assert request.properties is not None
    assert request.properties.ResponseTopic == "tidings.replies"
    assert request.properties.CorrelationData == b"req-1"
    reply = _delivered(OutRecord("tidings.replies", b"2",
                                 headers={"tidings-correlation-id": "req-1"}))
    assert reply.properties is not None and reply.properties.CorrelationData == b"req-1"


def test_a_plain_mqtt5_request_becomes_a_tidings_request() -> None:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ResponseTopic, props.CorrelationData = "their/replies", b"c-9"
    message = paho.MQTTMessage(mid=1, topic=b"calc")
    message.payload, message.properties = b"5", props
    record = record_of(message, 0)
    assert record.headers == {"tidings-reply-to": "their/replies", "tidings-id": "c-9"}
    assert record.key is None


def test_url_options_are_typed_and_the_password_never_echoed() -> None:
    settings = parse_url("mqtt://u%40x:p%3Aw@host:1884?member=a-1&session_expiry=60")
    assert (settings.host, settings.port, settings.username, settings.password) == (
        "host", 1884, "u@x", "p:w")
    assert (settings.member, settings.session_expiry) == ("a-1", 60)
    with pytest.raises(ConfigurationError) as info:
        parse_url("mqtt://u:hunter2@host:1883?keepalive=1")
    assert "keepalive" in str(info.value) and "hunter2" not in str(info.value)
