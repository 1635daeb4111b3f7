"""RabbitMQ benchmark: tidings against raw aio-pika and FastStream, on a node it starts.

Prints one JSON document. Every contender moves the same N events of ~200 B (the
``Event`` of ``bench_embedded``) with the same guarantees: persistent messages, publisher
confirms awaited before a publish counts, manual acks only after the message was
validated into the pydantic model.

- ``raw_aio_pika``: a durable queue; publishes in windows of 1,000 awaited confirms;
  a consumer with prefetch 1,000 that validates each message and acks it.
- ``tidings``: ``publish_many`` in batches of 1,000, four in flight, each awaited (durable:
  confirmed), then a typed handler (``async def handle(event: Event)``) at at-least-once
  (offsets committed past handled messages, every 100 ms).
- ``faststream``: FastStream's RabbitMQ broker (aio-pika underneath, publisher confirms
  on, its default) on a durable queue: ``broker.publish(..., persist=True)`` in windows
  of 1,000 awaited confirms, then a typed handler with ``AckPolicy.ACK`` (acked after the
  handler returned) and prefetch 1,000. It runs in a throwaway venv, never in the
  project's: ``--faststream-python PATH`` (``make bench-amqp`` makes one; by hand:
  ``python -m venv /tmp/fs-rabbit-venv && /tmp/fs-rabbit-venv/bin/pip install
  'faststream[rabbit]' pydantic``). Without it, that section says ``skipped``.

Throughput: ``publish_msg_per_s`` is N over the time to have all N confirmed;
``consume_msg_per_s`` is N over the time from the first handled message to the last;
``end_to_end_msg_per_s`` is N over the sum. CPU per message is the client process's
(the broker's is not counted, for anyone). ``latency``: publish-to-handler p50/p99
across two processes at a paced rate (the children of ``bench_embedded``).

Usage: python benchmarks/bench_amqp.py [--n 100000] [--rate 1000] [--seconds 5]
       [--url amqp://...] [--faststream-python PATH]
       [--only raw,tidings,faststream,latency]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
from bench_embedded import Event, make_event, two_process

from tidings import App

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def rates(n: int, publish_s: float, consume_s: float, publish_cpu_s: float,
          consume_cpu_s: float) -> dict[str, float]:
    """The figures every contender reports."""
    return {"publish_msg_per_s": round(n / publish_s), "consume_msg_per_s": round(n / consume_s),
            "end_to_end_msg_per_s": round(n / (publish_s + consume_s)),
            "publish_cpu_us_per_msg": round(publish_cpu_s / n * 1e6, 1),
            "consume_cpu_us_per_msg": round(consume_cpu_s / n * 1e6, 1)}


async def raw(url: str, n: int) -> dict[str, float]:
    """aio-pika alone: confirms on publish, manual acks after validation."""
    queue_name = f"raw-{uuid.uuid4().hex[:6]}"
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue_name, durable=True)
        events = [make_event(i) for i in range(n)]  # encoded in the timed loop, as tidings does
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(0, n, 1000):
            await asyncio.gather(*(channel.default_exchange.publish(
                aio_pika.Message(json.dumps(event).encode(),
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue_name) for event in events[i : i + 1000]))
        publish_s, publish_cpu = time.perf_counter() - started, time.process_time() - cpu
        del events

        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=1000)
        queue = await consumer.declare_queue(queue_name, durable=True)
        done = asyncio.Event()
        seen, first, cpu = 0, 0.0, 0.0

        async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal seen, first, cpu
            Event.model_validate_json(message.body)
            await message.ack()
            if not seen:
                first, cpu = time.perf_counter(), time.process_time()
            seen += 1
            if seen == n:
                done.set()

        tag = await queue.consume(handle)
        await asyncio.wait_for(done.wait(), 1200)
        consume_s, consume_cpu = time.perf_counter() - first, time.process_time() - cpu
        await queue.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
    return rates(n, publish_s, consume_s, publish_cpu, consume_cpu)


async def tidings(url: str, n: int) -> dict[str, float]:
    """publish_many in batches of 1,000, four in flight; a typed handler at at-least-once."""
    topic = f"tidings-{uuid.uuid4().hex[:6]}"
    producer = App("bench-producer", broker=url)
    async with producer:
        events = [make_event(i) for i in range(n)]
        started, cpu = time.perf_counter(), time.process_time()
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
        publish_s, publish_cpu = time.perf_counter() - started, time.process_time() - cpu
        del events, in_flight

    consumer = App("bench-consumer", broker=url)
    done = asyncio.Event()
    seen, first, cpu = 0, 0.0, 0.0

    @consumer.subscriber(topic)
    async def handle(event: Event) -> None:
        nonlocal seen, first, cpu
        if not seen:
            first, cpu = time.perf_counter(), time.process_time()
        seen += 1
        if seen == n:
            done.set()

    async with consumer:
        await asyncio.wait_for(done.wait(), 1200)
        consume_s, consume_cpu = time.perf_counter() - first, time.process_time() - cpu
    return rates(n, publish_s, consume_s, publish_cpu, consume_cpu)


# -- FastStream, in its own venv -----------------------------------------------------

FASTSTREAM = r'''
import asyncio, json, sys, time
from faststream import AckPolicy
from faststream.rabbit import Channel, RabbitBroker, RabbitQueue
from pydantic import BaseModel

class Event(BaseModel):
    n: int
    sent: float
    user: str
    kind: str
    pad: str

url, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
PAD = "x" * 120

async def main():
    broker = RabbitBroker(url, default_channel=Channel(publisher_confirms=True))
    queue = RabbitQueue(name, durable=True)
    done = asyncio.Event()
    state = {"seen": 0, "first": 0.0, "cpu": 0.0}

    @broker.subscriber(queue, ack_policy=AckPolicy.ACK, channel=Channel(prefetch_count=1000))
    async def handle(event: Event) -> None:
        if not state["seen"]:
            state["first"], state["cpu"] = time.perf_counter(), time.process_time()
        state["seen"] += 1
        if state["seen"] == n:
            done.set()

    await broker.connect()
    await broker.declare_queue(queue)
    events = [{"n": i, "sent": time.time(), "user": f"user-{i % 1000}",
               "kind": "USER_REGISTERED", "pad": PAD} for i in range(n)]
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(0, n, 1000):
        await asyncio.gather(*(broker.publish(event, queue=queue, persist=True)
                               for event in events[i:i + 1000]))
    publish_s, publish_cpu = time.perf_counter() - started, time.process_time() - cpu
    del events
    await broker.start()
    await asyncio.wait_for(done.wait(), 1200)
    consume_s = time.perf_counter() - state["first"]
    cpu_s = time.process_time() - state["cpu"]
    await broker.stop()
    print(json.dumps({"publish_s": publish_s, "consume_s": consume_s, "cpu_s": cpu_s,
                      "publish_cpu_s": publish_cpu}))

asyncio.run(main())
'''


def faststream(python: str | None, url: str, n: int) -> dict[str, Any]:
    """FastStream's RabbitMQ broker with a typed handler, run by ``python`` (its own venv)."""
    if not python or not Path(python).exists():
        return {"skipped": "no --faststream-python (a venv with faststream[rabbit])"}
    queue = f"fs-{uuid.uuid4().hex[:6]}"
    out = subprocess.run([python, "-c", FASTSTREAM, url, queue, str(n)],
                         capture_output=True, text=True, timeout=2400, check=False)
    if out.returncode != 0:
        return {"failed": out.stderr.strip().splitlines()[-1:]}
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return rates(n, report["publish_s"], report["consume_s"], report["publish_cpu_s"],
                 report["cpu_s"])


# -- the run -------------------------------------------------------------------------


def ratio(a: dict[str, Any], b: dict[str, Any], key: str = "end_to_end_msg_per_s"
          ) -> float | None:
    return round(a[key] / b[key], 2) if key in a and key in b else None


async def throughput(url: str, args: argparse.Namespace, only: set[str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if "raw" in only:
        result["raw_aio_pika"] = await raw(url, args.n)
    if "tidings" in only:
        result["tidings"] = await tidings(url, args.n)
    if "faststream" in only:
        result["faststream"] = await asyncio.to_thread(
            faststream, args.faststream_python, url, args.n)
    return result


def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    only = set(args.only.split(","))
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "cpu": platform.processor() or platform.machine(),
                    "load_avg_1m_at_start": round(os.getloadavg()[0], 2)},
        "n": args.n, **asyncio.run(throughput(url, args, only)),
    }
    if "latency" in only:
        paced = int(args.rate * args.seconds)
        result["latency"] = {"rate_msg_per_s": args.rate, "messages": paced,
                             **two_process(args.rate, paced, url, args.seconds),
                             "target_p99_ms": 50}
    tid, raw_ = result.get("tidings", {}), result.get("raw_aio_pika", {})
    fs = result.get("faststream", {})
    result["ratios"] = {
        "tidings_over_raw": {k: ratio(tid, raw_, f"{k}_msg_per_s")
                             for k in ("publish", "consume", "end_to_end")},
        "tidings_over_faststream": {k: ratio(tid, fs, f"{k}_msg_per_s")
                                    for k in ("publish", "consume", "end_to_end")},
        "targets_end_to_end": {"tidings_over_raw": 0.7, "tidings_over_faststream": 3},
    }
    result["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--url", help="a RabbitMQ to use (default: start a private node)")
    parser.add_argument("--faststream-python", default=os.environ.get("FASTSTREAM_PYTHON"))
    parser.add_argument("--only", default="raw,tidings,faststream,latency")
    args = parser.parse_args()
    if args.url:
        print(json.dumps(run(args.url, args), indent=2))
        return
    from rabbitmq_broker import running_rabbitmq  # type: ignore[import-not-found]

    with running_rabbitmq() as url:
        result = run(url, args)
        result["broker"] = "a private RabbitMQ node (Debian's rabbitmq-server), same machine"
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
