"""Deterministic partition assignment, shared by backends that coordinate groups themselves."""

from __future__ import annotations

import zlib
from collections.abc import Collection, Mapping

from ._records import TopicPartition

__all__ = ["desired_assignment"]


def desired_assignment(
    members: Mapping[str, Collection[str]], partitions: Mapping[str, int]
) -> dict[str, set[TopicPartition]]:
    """Spread each topic's partitions round-robin over the members subscribed to it.

    ``members`` maps member id -> subscribed topics; ``partitions`` maps topic -> count.
    Members are taken in sorted order so that every member computes the same answer; each
    topic starts at a member chosen by its name, so many one-partition topics still spread.
    """
    result: dict[str, set[TopicPartition]] = {member: set() for member in members}
    for topic, count in sorted(partitions.items()):
        subscribed = sorted(m for m, topics in members.items() if topic in topics)
        if not subscribed:
            continue
        first = zlib.crc32(topic.encode())
        for partition in range(count):
            owner = subscribed[(first + partition) % len(subscribed)]
            result[owner].add(TopicPartition(topic, partition))
    return result
