"""``amqp://user:password@host:port/vhost[?options]``: tidings over RabbitMQ.

Built on aiormq. Each partition of a topic is a RabbitMQ stream, so RabbitMQ keeps a log
as Kafka does: groups read it at their own committed offsets, and replay, offset resets
and ``offsets_for_time`` work. Publishes wait for publisher confirms; group members own
partitions through exclusive queues; delays wait in TTL bucket queues. The design is in
``docs/amqp.md``; options are listed in :class:`AmqpSettings`.
"""

from __future__ import annotations

from ._settings import AmqpSettings, parse_url
from ._transport import AmqpTransport

__all__ = ["AmqpSettings", "AmqpTransport", "from_url"]


def from_url(url: str) -> AmqpTransport:
    """Build a (not yet started) transport from an ``amqp://`` URL; settings are
    validated now and a bad option raises :class:`~tidings.ConfigurationError`."""
    return AmqpTransport(parse_url(url))
