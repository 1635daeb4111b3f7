"""RabbitMQ benchmark: tidings against the raw aio-pika client, on a node it starts.

Prints one JSON document. Both move the same N events of ~200 B (the ``Event`` of
``bench_embedded``) with the same guarantees: persistent messages, publisher confirms
awaited before a publish counts, manual acks only after the message was validated into
the pydantic model.

- ``raw_aio_pika``: a durable queue; publishes in windows of 1,000 awaited confirms;
  a consumer with prefetch 1,000 that validates each message and acks it.
- ``tidings``: ``publish_many`` in batches of 1,000, four in flight, each awaited (durable:
  confirmed), then a typed handler (``async def handle(event: Event)``) at at-least-once
  (offsets committed past handled messages, every 100 ms).

Throughput: ``publish_msg_per_s`` is N over the time to have all N confirmed;
``consume_msg_per_s`` is N over the time from the first handled message to the last;
``end_to_end_msg_per_s`` is N over the sum. ``ratio`` is tidings' over the raw client's.

Usage: python benchmarks/bench_amqp.py [--n 20000] [--url amqp://...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
from bench_embedded import Event, make_event

from tidings import App

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def rates(n: int, publish_s: float, consume_s: float) -> dict[str, float]:
    return {"publish_msg_per_s": round(n / publish_s), "consume_msg_per_s": round(n / consume_s),
            "end_to_end_msg_per_s": round(n / (publish_s + consume_s))}


async def raw(url: str, n: int) -> dict[str, float]:
    """aio-pika alone: confirms on publish, manual acks after validation."""
    queue_name = f"raw-{uuid.uuid4().hex[:6]}"
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue_name, durable=True)
        bodies = [json.dumps(make_event(i)).encode() for i in range(n)]
        started = time.perf_counter()
        for i in range(0, n, 1000):
            await asyncio.gather(*(channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue_name) for body in bodies[i : i + 1000]))
        publish_s = time.perf_counter() - started

        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=1000)
        queue = await consumer.declare_queue(queue_name, durable=True)
        done = asyncio.Event()
        seen, first = 0, 0.0

        async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal seen, first
            Event.model_validate_json(message.body)
            await message.ack()
            if not seen:
                first = time.perf_counter()
            seen += 1
            if seen == n:
                done.set()

        tag = await queue.consume(handle)
        await asyncio.wait_for(done.wait(), 600)
        consume_s = time.perf_counter() - first
        await queue.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
    return rates(n, publish_s, consume_s)


async def tidings(url: str, n: int) -> dict[str, float]:
    """publish_many in batches of 1,000, four in flight; a typed handler at at-least-once."""
    topic = f"tidings-{uuid.uuid4().hex[:6]}"
    producer = App("bench-producer", broker=url)
    async with producer:
        events = [make_event(i) for i in range(n)]
        started = time.perf_counter()
        in_flight: set[asyncio.Task[Any]] = set()
        for i in range(0, n, 1000):
            if len(in_flight) >= 4:
                done_now, in_flight = await asyncio.wait(
                    in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done_now:
                    task.result()
            in_flight.add(asyncio.create_task(producer.publish_many(
                topic, events[i : i + 1000], key=lambda e: e["user"])))
        await asyncio.gather(*in_flight)
        publish_s = time.perf_counter() - started

    consumer = App("bench-consumer", broker=url)
    done = asyncio.Event()
    seen, first = 0, 0.0

    @consumer.subscriber(topic)
    async def handle(event: Event) -> None:
        nonlocal seen, first
        if not seen:
            first = time.perf_counter()
        seen += 1
        if seen == n:
            done.set()

    async with consumer:
        await asyncio.wait_for(done.wait(), 600)
        consume_s = time.perf_counter() - first
    return rates(n, publish_s, consume_s)


async def run(url: str, n: int) -> dict[str, Any]:
    result: dict[str, Any] = {"n": n, "raw_aio_pika": await raw(url, n),
                              "tidings": await tidings(url, n)}
    result["ratio"] = {k: round(result["tidings"][k] / result["raw_aio_pika"][k], 2)
                       for k in result["tidings"]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--url", help="a RabbitMQ to use (default: start a private node)")
    args = parser.parse_args()
    if args.url:
        print(json.dumps(asyncio.run(run(args.url, args.n)), indent=2))
        return
    from rabbitmq_broker import running_rabbitmq

    with running_rabbitmq() as url:
        print(json.dumps(asyncio.run(run(url, args.n)), indent=2))


if __name__ == "__main__":
    main()
