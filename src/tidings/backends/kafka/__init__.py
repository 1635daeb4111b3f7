"""``kafka://host:port[,host:port][?options]``: tidings over Apache Kafka (or tansu, Redpanda...).

Built on confluent-kafka (librdkafka): an idempotent, acks=all producer whose appends
return once acknowledged; consumer groups with eager rebalancing and manual, synchronous
commits; delayed records kept durably in internal delay-tier topics. Options are listed
in :class:`KafkaSettings`; see ``docs/kafka.md``.
"""

from __future__ import annotations

from ._settings import KafkaSettings, parse_url
from ._subscription import KafkaSubscription
from ._transport import KafkaTransport

__all__ = ["KafkaSettings", "KafkaSubscription", "KafkaTransport", "from_url"]


def from_url(url: str) -> KafkaTransport:
    """Build a (not yet started) transport from a ``kafka://`` URL; settings are
    validated now and a bad option raises :class:`~tidings.ConfigurationError`."""
    return KafkaTransport(parse_url(url))
