"""Pieces of the console and the AsyncAPI support that need no bus."""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel

from tidings import App, Record, testing
from tidings.asyncapi import breaking_changes, document
from tidings.backends.memory import MemoryBroker, MemoryTransport
from tidings.console._conversation import find_records
from tidings.console._redact import redact, redact_url


class Event(BaseModel):
    order_id: str


def test_publishes_returns_the_function_unchanged_and_is_described() -> None:
    app = App("svc", broker=testing.memory_url())

    async def send(order_id: str) -> None: ...

    assert app.publishes("events", Event)(send) is send
    app.publishes("more-events", Event)  # also as a plain declaration
    doc = document(app)
    assert set(doc["channels"]) == {"events", "more-events"}
    assert doc["operations"]["svc.send.events.Event"]["action"] == "send"


def test_redaction_masks_cards_and_secrets_and_url_passwords() -> None:
    payload = {"card_number": "4242424242424242", "note": "pay 4000 0000 0000 0002",
               "nested": [{"password": "hunter2"}, "5555555555554444"], "total": 12,
               "order_id": "1234567890123"}
    assert redact(payload) == {"card_number": "**** 4242", "note": "pay **** 0002",
                               "nested": [{"password": "****"}, "**** 4444"], "total": 12,
                               "order_id": "1234567890123"}
    assert redact_url("kafka://app:s3cret@broker:9092") == "kafka://app:***@broker:9092"
    assert redact_url("sqlite:///bus.db") == "sqlite:///bus.db"


def test_removing_a_message_or_a_required_field_breaks_adding_a_topic_does_not() -> None:
    def doc(props: dict[str, str], required: list[str], topics: tuple[str, ...] = ("t",)
            ) -> dict[str, object]:
        return {
            "channels": {t: {"address": t, "messages": {"M": {}}} for t in topics},
            "components": {"messages": {"M": {"payload": {"$ref": "#/components/schemas/M"}}},
                           "schemas": {"M": {"type": "object", "required": required,
                                             "properties": {k: {"type": v}
                                                            for k, v in props.items()}}}},
        }

    old = doc({"a": "string", "b": "integer"}, ["a", "b"])
    assert breaking_changes(old, doc({"a": "string", "b": "integer"}, ["a", "b"],
                                     ("t", "u"))) == []
    assert breaking_changes(old, doc({"a": "string"}, ["a"])) == [
        "topic t: M: required field 'b' removed"]
    assert breaking_changes(old, {"channels": {"t": {"address": "t", "messages": {}}}}) == [
        "topic t: message M removed"]


def test_a_lookup_reads_the_partitions_at_once() -> None:
    """Without an index, a conversation lookup reads the newest records of every
    partition; on a bus whose reads end by waiting (amqp://), it costs about one read,
    not one per partition."""
    wait = 0.3

    class SlowReads(MemoryTransport):
        async def read(self, topic: str, partition: int, offset: int, limit: int
                       ) -> list[Record]:
            await asyncio.sleep(wait)
            return await super().read(topic, partition, offset, limit)

    async def main() -> None:
        transport = SlowReads(MemoryBroker(default_partitions=4))
        async with App("svc", broker=transport) as app:
            for n in range(8):
                await app.publish("orders", {"n": n}, key=f"o-{n}")
            topics = await transport.describe_topics()
            started = time.monotonic()
            found = await find_records(transport, "o-3", topics)
            took = time.monotonic() - started
        assert [r.key for r in found] == ["o-3"]
        assert took < 3 * wait, f"a lookup took {took:.2f} s: partitions were read in turn"

    asyncio.run(main())
