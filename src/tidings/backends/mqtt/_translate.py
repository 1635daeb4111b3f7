"""Driver errors in one place: MQTT reason codes and paho results to tidings' errors."""

from __future__ import annotations

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from ..._errors import (
    BrokerUnavailableError,
    ConfigurationError,
    MessageTooLargeError,
    TidingsError,
    TransportError,
)

__all__ = ["connect_error", "publish_error", "refused"]

#: CONNACK reasons that a retry will not fix: the URL's credentials.
_CREDENTIALS = {"Bad user name or password", "Not authorized", "Bad authentication method",
                "Banned"}


def connect_error(where: str, reason: ReasonCode) -> TidingsError:
    """The error for a refused CONNECT."""
    name = reason.getName()
    if name == "Client identifier not valid":
        return ConfigurationError(f"{where} refused the connection: {name} (the broker may "
                                  "limit client ids to 23 characters; see docs/mqtt.md)")
    if name in _CREDENTIALS:
        return ConfigurationError(
            f"{where} refused the connection: {name} (check the user and password in the URL)"
        )
    return BrokerUnavailableError(f"{where} refused the connection: {name}")


def publish_error(where: str, topic: str, reason: ReasonCode | None,
                  result: MQTTErrorCode | int | None) -> TransportError:
    """The error for a publish the broker (``reason``) or paho (``result``) refused."""
    if result == paho.MQTT_ERR_PAYLOAD_SIZE:
        return MessageTooLargeError(f"{where}: a message to {topic!r} is larger than MQTT allows")
    if result is not None:
        return TransportError(f"{where}: publish to {topic!r} failed: "
                              f"{paho.error_string(int(result))}")
    name = reason.getName() if reason is not None else "unknown"
    if name == "Packet too large":
        return MessageTooLargeError(f"{where} refused a message as too large: {name}")
    return TransportError(f"{where} refused a message: {name}")


def refused(feature: str, capability: str, hint: str = "") -> ConfigurationError:
    """The error for an operation MQTT cannot do, naming the backend and the capability."""
    return ConfigurationError(
        f"the mqtt backend cannot {feature}: it lacks the {capability!r} capability "
        f"(an MQTT broker keeps no log){hint}"
    )
