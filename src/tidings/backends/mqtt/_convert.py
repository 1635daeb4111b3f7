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
import time

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..._message import Headers
from ..._records import OutRecord, Record

__all__ = ["KEY", "TIMESTAMP", "properties_of", "record_of"]

KEY = "tidings-key"
TIMESTAMP = "tidings-timestamp"
QUOTED = "tidings-quoted"
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def properties_of(record: OutRecord) -> Properties:
    """The PUBLISH properties that carry ``record``'s key, headers and time."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    headers = record.headers
    pairs = [(TIMESTAMP, f"{time.time():.6f}"), *headers.items()]
    quoted = [name for name, value in headers.items() if _CONTROL.search(value)]
    if quoted:
        pairs = [(k, json.dumps(v) if k in quoted else v) for k, v in pairs]
        pairs.append((QUOTED, ",".join(quoted)))
    if record.key is not None:
        pairs.append((KEY, record.key))
    props.UserProperty = pairs
    reply_to = headers.get(Headers.REPLY_TO)
    if reply_to is not None:  # a request
        props.ResponseTopic = reply_to
        props.CorrelationData = headers.get(Headers.ID, "").encode()
    elif Headers.ID not in headers and Headers.CORRELATION_ID in headers:  # a reply
        props.CorrelationData = headers[Headers.CORRELATION_ID].encode()
    return props


def record_of(message: paho.MQTTMessage, offset: int) -> Record:
    """The record of a delivered message, at the subscription's sequence ``offset``."""
    props = message.properties
    headers = dict(getattr(props, "UserProperty", None) or ())
    key = headers.pop(KEY, None)
    stamp = headers.pop(TIMESTAMP, None)
    quoted = headers.pop(QUOTED, None)
    if quoted:
        for name in quoted.split(","):
            if name in headers:
                headers[name] = json.loads(headers[name])
    try:
        timestamp = float(stamp) if stamp is not None else time.time()
    except ValueError:
        timestamp = time.time()
    response = getattr(props, "ResponseTopic", None)
    if response and Headers.REPLY_TO not in headers:  # a request from a plain MQTT client
        headers[Headers.REPLY_TO] = response
        data = getattr(props, "CorrelationData", None)
        if data and Headers.ID not in headers:
            headers[Headers.ID] = bytes(data).decode(errors="replace")
    return Record(message.topic, 0, offset, key, bytes(message.payload), headers, timestamp)
