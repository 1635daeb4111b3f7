"""``mqtt://[user:password@]host:port[?options]``: tidings over an MQTT 5 broker.

Built on paho-mqtt 2.x, driven by the asyncio loop: QoS 1 publishes confirmed by the
broker's PUBACK; consumer groups as shared subscriptions (``$share/GROUP/topic``);
deliveries acknowledged only once handled (manual PUBACK), and persistent sessions for
named members (``?member=NAME``). Options are listed in :class:`MqttSettings`; what MQTT
cannot do is refused by name. See ``docs/mqtt.md``.
"""

from __future__ import annotations

from ._settings import MqttSettings, parse_url
from ._subscription import MqttSubscription
from ._transport import MqttTransport

__all__ = ["MqttSettings", "MqttSubscription", "MqttTransport", "from_url"]


def from_url(url: str) -> MqttTransport:
    """Build a (not yet started) transport from an ``mqtt://`` URL; settings are
    validated now and a bad option raises :class:`~tidings.ConfigurationError`."""
    return MqttTransport(parse_url(url))
