"""Batched publishing on RabbitMQ (``tidings.backends.amqp._publish``), and the aiormq
internals it relies on, on a real private node: delivery tags and confirmations, nacks,
a channel the broker closes mid-batch, a caller cancelled mid-publish, a client-side
close racing publishes. The connection must survive all of them: a frame written on a
closed channel makes RabbitMQ close the whole connection (504 CHANNEL_ERROR)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import random
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiormq
import pytest
from aiormq.abc import AbstractChannel, AbstractConnection
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from rabbitmq_broker import delete_queue, new_vhost
from tidings import App
from tidings._errors import TransportError
from tidings._records import OutRecord
from tidings.backends.amqp import from_url
from tidings.backends.amqp._publish import (
    BATCH_MESSAGES,
    BatchPublisher,
    Message,
    _closing,
    content_header,
)

PERSISTENT = Basic.Properties(delivery_mode=2)


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())  # type: ignore[arg-type]


class Node:
    """A connection, a publisher on it, and queues to publish to (deleted after)."""

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection
        self.channels: list[AbstractChannel] = []
        self.publisher = BatchPublisher(self.open_channel)
        self.queues: list[str] = []

    async def open_channel(self) -> AbstractChannel:
        channel = await self.connection.channel(publisher_confirms=True)
        self.channels.append(channel)
        return channel

    async def queue(self, **arguments: Any) -> str:
        name = f"pub-{uuid.uuid4().hex[:8]}"
        channel = await self.connection.channel()
        await channel.queue_declare(name, arguments=arguments or None)
        await channel.close()
        self.queues.append(name)
        return name

    async def bodies(self, queue: str) -> list[bytes]:
        """Every message in ``queue``, in order (taken off it)."""
        channel = await self.connection.channel()
        out: list[bytes] = []
        while True:
            got = await channel.basic_get(queue, no_ack=True)
            if got.body is None or isinstance(got.delivery, Basic.GetEmpty):
                break
            out.append(got.body)
        await channel.close()
        return out


@contextlib.asynccontextmanager
async def node(url: str) -> AsyncIterator[Node]:
    connection = await aiormq.connect(url)
    n = Node(connection)
    try:
        yield n
    finally:
        assert not connection.is_closed, "the connection closed: a frame on a closed channel?"
        await connection.close()


def message(queue: str, body: bytes, exchange: str = "") -> Message:
    return (exchange, queue, body, Basic.Properties(headers={"size": str(len(body))},
                                                    delivery_mode=2))


# -- the content header is what pamqp makes -----------------------------------------


@pytest.mark.parametrize("props", [
    Basic.Properties(headers={"x-tidings-key": "user-1", "tidings-id": "abc", "é": "ü"},
                     delivery_mode=2),
    Basic.Properties(headers={"b": "", "a": "x" * 70_000}, delivery_mode=1),
    Basic.Properties(headers={"n": 1, "s": "x"}, delivery_mode=2),  # not all strings
    Basic.Properties(headers={"k" * 200: "v"}, delivery_mode=2),  # a key pamqp truncates
    Basic.Properties(headers={"s": "x"}, delivery_mode=2, message_id="m1"),
    Basic.Properties(delivery_mode=2),
    Basic.Properties(),
    Basic.Properties(headers={"s": "x"}, delivery_mode=2, app_id=""),
])
def test_the_content_header_is_byte_for_byte_pamqps(props: Basic.Properties) -> None:
    with_id = copy.copy(props)
    with_id.message_id = props.message_id or "0123456789ab-42"
    for size in (0, 200, 2**40):
        assert content_header(size, props) == ContentHeader(0, size, props).marshal()
        # The publisher's own message id, for a return to find its caller.
        assert (content_header(size, props, "0123456789ab-42")
                == ContentHeader(0, size, with_id).marshal())


# -- tags, confirmations, order -----------------------------------------------------


def test_batches_and_single_publishes_share_one_channel_in_order(amqp_url: str) -> None:
    async def main() -> None:
        async with node(amqp_url) as n:
            queue = await n.queue()
            # Concurrent single publishes, batches larger than one frame batch, and
            # aiormq's own basic_publish on the same channel (it takes the same lock).
            await n.publisher.publish([message(queue, b"first")])
            channel = n.channels[0]
            many = [message(queue, f"{i}".encode()) for i in range(2 * BATCH_MESSAGES + 7)]
            singles = [n.publisher.publish([message(queue, f"s{i}".encode())])
                       for i in range(50)]
            own = channel.basic_publish(b"aiormq", routing_key=queue, properties=PERSISTENT)
            results = await asyncio.gather(n.publisher.publish(many), *singles, own)
            assert isinstance(results[-1], Basic.Ack)
            total = 1 + len(many) + 50 + 1
            assert channel.delivery_tag == total  # one tag per message, none reused
            assert not channel.confirmations  # every one resolved and forgotten
            assert len(n.channels) == 1
            bodies = await n.bodies(queue)
            assert sorted(bodies) == sorted([b"first", b"aiormq"]
                                            + [m[2] for m in many]
                                            + [f"s{i}".encode() for i in range(50)])
            # One caller's messages keep their order.
            mine = [b for b in bodies if b.isdigit()]
            assert mine == [m[2] for m in many]

    run(main)


def test_a_message_too_large_for_one_frame_is_split(amqp_url: str) -> None:
    async def main() -> None:
        async with node(amqp_url) as n:
            queue = await n.queue()
            big = bytes(random.getrandbits(8) for _ in range(300_000))  # > frame_max
            await n.publisher.publish([message(queue, b"a"), message(queue, big),
                                       message(queue, b"")])
            assert await n.bodies(queue) == [b"a", big, b""]

    run(main)


# -- refusals and closes: an error to the caller, never a silent loss -----------------


def test_a_nack_is_an_error_to_its_caller_only(amqp_url: str) -> None:
    async def main() -> None:
        async with node(amqp_url) as n:
            full = await n.queue(**{"x-max-length": 1, "x-overflow": "reject-publish"})
            other = await n.queue()
            refused = n.publisher.publish([message(full, b"1"), message(full, b"2")])
            fine = n.publisher.publish([message(other, b"3")])
            results = await asyncio.gather(refused, fine, return_exceptions=True)
            assert isinstance(results[0], aiormq.exceptions.DeliveryError)
            assert results[1] is None
            assert await n.bodies(full) == [b"1"]
            assert await n.bodies(other) == [b"3"]

    run(main)


def test_a_message_no_queue_takes_is_an_error_to_its_caller_only(amqp_url: str) -> None:
    """Published to a queue that does not exist (a stream deleted by hand): RabbitMQ
    confirms it and drops it unless it is mandatory; it is, so it comes back and fails
    its caller, while the other callers of the batch are confirmed. Nothing is left in
    the channel's message-id map once the callers are settled."""
    async def main() -> None:
        async with node(amqp_url) as n:
            there = await n.queue()
            gone = f"pub-missing-{uuid.uuid4().hex[:8]}"
            results = await asyncio.gather(
                n.publisher.publish([message(there, b"1")]),
                n.publisher.publish([message(there, b"2"), message(gone, b"lost")]),
                n.publisher.publish([message(there, b"3")]),
                return_exceptions=True)
            assert results[0] is None and results[2] is None
            assert isinstance(results[1], aiormq.exceptions.PublishError)
            assert await n.bodies(there) == [b"1", b"2", b"3"]
            await n.publisher.publish([message(there, b"4")])  # the channel goes on
            assert await n.bodies(there) == [b"4"]
            assert not any(ch.message_id_delivery_tag for ch in n.channels)

    run(main)


def test_an_append_to_a_deleted_stream_is_an_error_not_a_silent_loss(amqp_url: str) -> None:
    """Someone deletes a partition's stream: an append to it raises, naming the stream,
    and the topic's other partitions go on."""
    async def main() -> None:
        url = await asyncio.to_thread(new_vhost, amqp_url, f"gone-{uuid.uuid4().hex[:8]}")
        transport = from_url(url)
        await transport.start()
        try:
            topic = f"t-{uuid.uuid4().hex[:8]}"
            await transport.ensure_topic(topic, 2)
            await delete_queue(url, f"{topic}.0")
            with pytest.raises(TransportError, match=rf"'{topic}\.0' \(was its stream deleted"):
                await transport.append([OutRecord(topic, b"x", partition=0)])
            await transport.append([OutRecord(topic, b"y", partition=1)])
            assert [r.value for r in await transport.read(topic, 1, 0, 10)] == [b"y"]
        finally:
            await transport.close()

    run(main)


def test_a_nack_through_the_transport_is_a_transport_error(amqp_url: str) -> None:
    async def main() -> None:
        transport = from_url(amqp_url)
        await transport.start()
        try:
            async with node(amqp_url) as n:
                full = await n.queue(**{"x-max-length": 0, "x-overflow": "reject-publish"})
                with pytest.raises(TransportError, match="refused"):
                    await transport.publish(full, b"x", PERSISTENT)
        finally:
            await transport.close()

    run(main)


def test_a_channel_closed_mid_batch_fails_every_unconfirmed_publish(amqp_url: str) -> None:
    async def main() -> None:
        async with node(amqp_url) as n:
            queue = await n.queue()
            before = [n.publisher.publish([message(queue, f"b{i}".encode())])
                      for i in range(20)]
            # A missing exchange: the broker closes the channel (404) at this publish
            # and drops what follows it on the channel until our close-ok.
            bad = n.publisher.publish([message(queue, b"bad", exchange="no-such-exchange")])
            after = [n.publisher.publish([message(queue, f"a{i}".encode()) for i in range(5)])
                     for _ in range(20)]
            results = await asyncio.gather(*before, bad, *after, return_exceptions=True)
            assert isinstance(results[20], aiormq.exceptions.ChannelNotFoundEntity)
            assert all(isinstance(r, aiormq.exceptions.ChannelNotFoundEntity)
                       for r in results[21:])
            # What was confirmed is in the queue; the rest raised.
            confirmed = {f"b{i}".encode() for i, r in enumerate(results[:20]) if r is None}
            assert confirmed <= set(await n.bodies(queue))
            # The publisher goes on, on a new channel, on the same connection.
            await n.publisher.publish([message(queue, b"later")])
            assert await n.bodies(queue) == [b"later"]
            assert len(n.channels) == 2

    run(main)


def test_a_closed_or_closing_channel_is_never_written_to(amqp_url: str) -> None:
    async def main() -> None:
        async with node(amqp_url) as n:
            queue = await n.queue()
            await n.publisher.publish([message(queue, b"1")])
            first = n.channels[0]
            # The broker closes the channel; its close event is set before is_closed.
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
                await first.basic_publish(b"", exchange="no-such-exchange", routing_key="x")
            assert _closing(first)
            await n.publisher.publish([message(queue, b"2")])
            assert len(n.channels) == 2 and n.channels[1] is not first
            # A client-side close racing publishes: each publish succeeds or raises.
            racing = [n.publisher.publish([message(queue, f"r{i}".encode())])
                      for i in range(200)]
            closing = n.channels[1].close()
            results = await asyncio.gather(*racing, closing, return_exceptions=True)
            done = {f"r{i}".encode() for i, r in enumerate(results[:200]) if r is None}
            assert all(r is None or isinstance(r, Exception) for r in results)
            assert done <= set(await n.bodies(queue))

    run(main)


def test_a_channel_the_broker_is_closing_counts_as_closed(amqp_url: str) -> None:
    """Between the broker's channel.close (our close-ok queued at once) and the channel
    object being closed, a batch must not be queued behind that close-ok."""

    async def main() -> None:
        async with node(amqp_url) as n:
            queue = await n.queue()
            await n.publisher.publish([message(queue, b"1")])
            channel = n.channels[0]
            event: asyncio.Event = channel._Channel__close_event  # type: ignore[attr-defined]
            bad = asyncio.create_task(
                channel.basic_publish(b"", exchange="no-such-exchange", routing_key="x"))
            await event.wait()
            assert not channel.is_closed  # the window
            assert _closing(channel)
            late = asyncio.create_task(n.publisher.publish([message(queue, b"2")]))
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
                await bad
            await late
            assert await n.bodies(queue) == [b"1", b"2"]
            assert len(n.channels) == 2

    run(main)


def test_a_connection_closed_under_publishes_is_an_error_not_a_cancellation(
        amqp_url: str) -> None:
    """aiormq fails a closed channel's futures with CancelledError; a caller must get
    an error (or, through the transport, its publish done on the next connection), never
    look cancelled."""

    async def main() -> None:
        connection = await aiormq.connect(amqp_url)
        publisher = BatchPublisher(lambda: connection.channel(publisher_confirms=True))
        queue = f"pub-{uuid.uuid4().hex[:8]}"
        await (await connection.channel()).queue_declare(queue)
        publishes = [asyncio.create_task(publisher.publish([message(queue, b"x" * 1000)]))
                     for _ in range(20_000)]
        for _ in range(3):
            await asyncio.sleep(0)  # the first batch is on its way
        await connection.close()
        results = await asyncio.gather(*publishes, return_exceptions=True)
        assert not [r for r in results if isinstance(r, asyncio.CancelledError)]
        assert any(isinstance(r, Exception) for r in results)

        transport = from_url(amqp_url)
        await transport.start()
        try:
            await transport.publish(queue, b"first", PERSISTENT)  # the channel is open
            publishes = [asyncio.create_task(transport.publish(queue, b"x", PERSISTENT))
                         for _ in range(20_000)]
            for _ in range(3):
                await asyncio.sleep(0)
            await transport.connection.close()
            results = await asyncio.gather(*publishes, return_exceptions=True)
            assert all(r is None or isinstance(r, TransportError) for r in results), \
                {type(r) for r in results}
        finally:
            await transport.close()

    run(main)


# -- cancellation ---------------------------------------------------------------------


def test_cancelled_callers_leave_the_channel_usable(amqp_url: str) -> None:
    async def main() -> None:
        async with node(amqp_url) as n:
            queue = await n.queue()
            rng = random.Random(7)
            for round_ in range(20):
                tasks = [asyncio.create_task(n.publisher.publish(
                    [message(queue, f"{round_}.{i}.{j}".encode())
                     for j in range(rng.randint(1, 300))])) for i in range(10)]
                for _ in range(rng.randint(0, 3)):
                    await asyncio.sleep(0)
                for task in rng.sample(tasks, 5):
                    task.cancel()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results)
            # Nothing is stuck and the tags still line up with what was written.
            await n.publisher.publish([message(queue, b"end")])
            channel = n.channels[-1]
            assert not channel.confirmations
            assert len(n.channels) == 1
            assert (await n.bodies(queue))[-1] == b"end"

    run(main)


def test_a_timeout_around_publish_does_not_corrupt_the_channel(amqp_url: str) -> None:
    async def main() -> None:
        async with node(amqp_url) as n:
            queue = await n.queue()
            batch = [message(queue, b"x" * 1000) for _ in range(5000)]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(n.publisher.publish(batch), 0.001)
            await n.publisher.publish([message(queue, b"after")])
            assert (await n.bodies(queue))[-1] == b"after"

    run(main)


# -- under churn: the connection survives (no 504) -----------------------------------


def test_the_connection_survives_channel_closes_under_load(amqp_url: str) -> None:
    """Broker-side channel closes (missing exchange) while many batches are queued for
    the socket: a batch enqueued behind the close-ok would kill the connection."""

    async def main() -> None:
        async with node(amqp_url) as n:
            queue = await n.queue()
            ok: set[bytes] = set()

            async def one(i: int) -> None:
                await asyncio.sleep(i % 7 * 0.001)
                if i % 100 == 13:
                    messages = [message(queue, b"bad", exchange="no-such-exchange")]
                else:
                    messages = [message(queue, f"{i}.{j}".encode()) for j in range(i % 40 + 1)]
                try:
                    await n.publisher.publish(messages)
                except aiormq.exceptions.AMQPError:
                    return
                ok.update(m[2] for m in messages)

            for wave in range(20):
                await asyncio.gather(*(one(wave * 100 + i) for i in range(100)))
            assert len(n.channels) > 10  # the broker did close channels
            assert ok <= set(await n.bodies(queue))

    run(main)


def test_records_are_appended_in_order_delayed_ones_too(amqp_url: str) -> None:
    topic = f"pub-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        async with App("producer", broker=amqp_url) as app:
            await app.publish_many(topic, [{"n": i} for i in range(3000)], key=lambda _: "k")
            records = await app.transport.read(topic, _partition(app.transport, topic), 0, 5000)
            assert [json.loads(r.value)["n"] for r in records] == list(range(3000))
            assert {r.key for r in records} == {"k"}
        # A record due later goes to the delay exchange in the same batch as the others.
        transport = from_url(amqp_url)
        await transport.start()
        try:
            await transport.append([OutRecord(topic, b"later", partition=0,
                                              deliver_at=time.time() + 0.3),
                                    OutRecord(topic, b"now", partition=0)])
            deadline = time.monotonic() + 30
            while [r.value for r in await transport.read(topic, 0, 0, 10)] != [b"now", b"later"]:
                assert time.monotonic() < deadline, "the delayed record never came"
                await asyncio.sleep(0.1)
        finally:
            await transport.close()

    run(main)


def _partition(transport: Any, topic: str) -> int:
    return zlib.crc32(b"k") % int(transport._partitions[topic])
