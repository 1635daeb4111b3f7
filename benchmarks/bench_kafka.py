"""Kafka benchmark: tidings against the raw client and FastStream, on a tansu it starts.

Prints one JSON document. Every contender moves the same N events of ~200 B (the
``Event`` of ``bench_embedded``) through a 4-partition topic and does the same useful
work per message: validate it into the pydantic model, then commit past it.

- ``raw_confluent_kafka``: the client alone. Batched produce (linger 5 ms, acks=all,
  idempotent, flush), then a consumer that takes batches of 500, validates each message
  and commits synchronously once per batch.
- ``tidings``: ``publish_many`` in batches of 1,000, four in flight, each awaited
  (durable), then a typed handler (``async def handle(event: Event)``) at at-least-once
  (commits every 100 ms, only past handled messages).
- ``tidings_batch``: the same, consumed by a typed batch handler
  (``async def handle(events: list[Event])``, ``batch=True``), up to 500 at a time.
- ``faststream``: FastStream's Kafka broker (aiokafka) with a typed handler, at
  at-least-once (``AckPolicy.ACK``: a commit after each handled message, as FastStream
  commits for a per-message handler) and, for reference, with its default policy
  (aiokafka's auto-commit every 5 s, which may skip or repeat messages in a crash).
  It runs in a throwaway venv, never in the project's: ``--faststream-python PATH``
  (``make bench-kafka`` makes one; by hand: ``python -m venv /tmp/fs-venv &&
  /tmp/fs-venv/bin/pip install 'faststream[kafka]' pydantic``). Without it, those
  sections say ``skipped``.

Throughput: ``publish_msg_per_s`` is N over the time to have all N acknowledged;
``consume_msg_per_s`` is N over the time from the first handled message to the last
(joining the group is not counted, for anyone); ``end_to_end_msg_per_s`` is N over the
sum. ``latency``: publish-to-handler p50/p99 across two processes at a paced rate (the
children of ``bench_embedded``, pointed at the same tansu).

Each throughput contender runs ``--repeat`` times, in turns, and reports its best run
plus every run's end-to-end figure.

Usage: python benchmarks/bench_kafka.py [--n 100000] [--fs-n 20000] [--rate 1000]
       [--seconds 5] [--repeat 3] [--faststream-python PATH]
       [--only raw,tidings,batch,faststream,latency]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench_embedded import Event, make_event, two_process
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from tidings import App

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from kafka_broker import running_tansu  # type: ignore[import-not-found]  # noqa: E402

PARTITIONS = 4


def rates(n: int, publish_s: float, consume_s: float, cpu_s: float,
          publish_cpu_s: float) -> dict[str, float]:
    """The figures every contender reports."""
    return {
        "messages": n,
        "publish_msg_per_s": round(n / publish_s),
        "consume_msg_per_s": round(n / consume_s),
        "end_to_end_msg_per_s": round(n / (publish_s + consume_s)),
        "publish_cpu_us_per_msg": round(publish_cpu_s / n * 1e6, 2),
        "consume_cpu_us_per_msg": round(cpu_s / n * 1e6, 2),
    }


#: --gc-freeze: move the pre-built input out of the garbage collector's reach.
FREEZE = False


def freeze_input(events: list[dict[str, object]]) -> None:
    """With ``--gc-freeze``, ``gc.freeze()`` the 100,000 pre-built events: the raw loop
    allocates no container objects, so the collector never runs there, while every
    collection in a framework's process walks them (see docs/kafka.md: ~25 % of
    tidings' CPU). Off by default: a real service has a heap of its own to walk."""
    if FREEZE:
        gc.collect()
        gc.freeze()


def create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        future.result(10)


# -- the raw client ------------------------------------------------------------------


def raw_client(bootstrap: str, n: int) -> dict[str, float]:
    """confluent-kafka alone: batched produce; consume, validate, commit per batch."""
    topic = f"raw-{uuid.uuid4().hex[:6]}"
    create_topic(bootstrap, topic)
    events = [make_event(i) for i in range(n)]  # encoded inside the timed loop, as tidings does
    freeze_input(events)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 5, "batch.size": 1_000_000,
                         "partitioner": "murmur2_random"})
    producer.produce(f"{topic}-warmup", b"{}")  # connected and idempotent before timing,
    producer.flush(30)  # as the App producers are (their start is not timed either)
    started, cpu = time.perf_counter(), time.process_time()
    for event in events:
        value = json.dumps(event).encode()
        while True:
            try:
                producer.produce(topic, value, str(event["user"]))
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(60)
    publish_s, publish_cpu = time.perf_counter() - started, time.process_time() - cpu
    del events  # a consumer holds no producer's input (tidings drops it too)

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"raw-{topic}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "fetch.wait.max.ms": 10, "session.timeout.ms": 6000,
                         "isolation.level": "read_committed"})
    consumer.subscribe([topic])
    seen, first, cpu = 0, 0.0, 0.0
    while seen < n:
        batch = consumer.consume(500, 0.5)
        if not batch:
            continue
        if not seen:
            first, cpu = time.perf_counter(), time.process_time()
        for message in batch:
            if message.error() is None:
                Event.model_validate_json(message.value() or b"")  # the same useful work
                seen += 1
        consumer.commit(asynchronous=False)
    consume_s, cpu_s = time.perf_counter() - first, time.process_time() - cpu
    consumer.close()
    gc.unfreeze()
    return rates(n, publish_s, consume_s, cpu_s, publish_cpu)


# -- tidings -------------------------------------------------------------------------


async def tidings(url: str, n: int, batch: bool = False) -> dict[str, float]:
    """publish_many in batches of 1,000, four in flight; a typed handler at at-least-once
    (``batch``: a typed batch handler, ``list[Event]``, up to 500 at a time)."""
    topic = f"tidings-{uuid.uuid4().hex[:6]}"
    producer = App("bench-producer", broker=url)
    async with producer:
        events = [make_event(i) for i in range(n)]
        freeze_input(events)
        started, cpu = time.perf_counter(), time.process_time()
        # Durable batches of 1,000, four in flight at a time (more was measured slower:
        # every message awaiting its acknowledgement is Python objects the GC walks).
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
        del events, in_flight  # the consumer below holds no producer's input (the raw
        # client's neither): every garbage collection there would walk 100,000 dicts

    consumer = App("bench-consumer", broker=url)
    done = asyncio.Event()
    seen = 0
    first, cpu = 0.0, 0.0

    def count(handled: int) -> None:
        nonlocal seen, first, cpu
        if not seen:
            first, cpu = time.perf_counter(), time.process_time()
        seen += handled
        if seen == n:
            done.set()

    if batch:
        @consumer.subscriber(topic, batch=True, max_batch=500)
        async def handle_batch(events: list[Event]) -> None:
            count(len(events))
    else:
        @consumer.subscriber(topic)
        async def handle(event: Event) -> None:
            count(1)

    async with consumer:
        await asyncio.wait_for(done.wait(), 600)
        consume_s, cpu_s = time.perf_counter() - first, time.process_time() - cpu
    gc.unfreeze()
    return rates(n, publish_s, consume_s, cpu_s, publish_cpu)


# -- FastStream, in its own venv -----------------------------------------------------

FASTSTREAM = r'''
import asyncio, json, sys, time
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from pydantic import BaseModel

class Event(BaseModel):
    n: int
    sent: float
    user: str
    kind: str
    pad: str

bootstrap, topic, n, policy = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
PAD = "x" * 120

async def main():
    broker = KafkaBroker(bootstrap, acks="all", linger_ms=5, max_batch_size=1_000_000)
    done = asyncio.Event()
    state = {"seen": 0, "first": 0.0, "cpu": 0.0}
    options = {} if policy == "default" else {"ack_policy": AckPolicy.ACK}

    @broker.subscriber(topic, group_id="fs-" + topic, auto_offset_reset="earliest",
                       fetch_max_wait_ms=10, session_timeout_ms=6000,
                       heartbeat_interval_ms=2000, **options)
    async def handle(event: Event) -> None:
        if not state["seen"]:
            state["first"], state["cpu"] = time.perf_counter(), time.process_time()
        state["seen"] += 1
        if state["seen"] == n:
            done.set()

    await broker.connect()
    events = [{"n": i, "sent": time.time(), "user": f"user-{i % 1000}",
               "kind": "USER_REGISTERED", "pad": PAD} for i in range(n)]
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(
        broker.publish_batch(*events[i:i + 1000], topic=topic, partition=(i // 1000) % 4)
        for i in range(0, n, 1000)))
    publish_s, publish_cpu = time.perf_counter() - started, time.process_time() - cpu
    await broker.start()
    await asyncio.wait_for(done.wait(), 900)
    consume_s = time.perf_counter() - state["first"]
    cpu_s = time.process_time() - state["cpu"]
    await broker.stop()
    print(json.dumps({"publish_s": publish_s, "consume_s": consume_s, "cpu_s": cpu_s,
                      "publish_cpu_s": publish_cpu}))

asyncio.run(main())
'''


def faststream(python: str | None, bootstrap: str, n: int, policy: str) -> dict[str, Any]:
    """FastStream's Kafka broker with a typed handler, run by ``python`` (its own venv)."""
    if not python or not Path(python).exists():
        return {"skipped": "no --faststream-python (a venv with faststream[kafka])"}
    topic = f"fs-{policy}-{uuid.uuid4().hex[:6]}"
    create_topic(bootstrap, topic)
    out = subprocess.run([python, "-c", FASTSTREAM, bootstrap, topic, str(n), policy],
                         capture_output=True, text=True, timeout=1200, check=False)
    if out.returncode != 0:
        return {"failed": out.stderr.strip().splitlines()[-1:]}
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return rates(n, report["publish_s"], report["consume_s"], report["cpu_s"],
                 report["publish_cpu_s"])


# -- the run -------------------------------------------------------------------------


def ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    key = "end_to_end_msg_per_s"
    return round(a[key] / b[key], 2) if key in a and key in b else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--fs-n", type=int, default=20_000,
                        help="messages for FastStream at at-least-once (~2k/s here)")
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--faststream-python", default=os.environ.get("FASTSTREAM_PYTHON"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() the pre-built input events (see freeze_input)")
    parser.add_argument("--only", default="raw,tidings,batch,faststream,latency")
    args = parser.parse_args()
    global FREEZE
    FREEZE = args.gc_freeze
    only = set(args.only.split(","))
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "load_avg_1m_at_start": round(os.getloadavg()[0], 2)},
        "broker": "tansu 0.6 (memory storage), started by this script",
        "gc_freeze_input": args.gc_freeze,
    }
    with running_tansu(session_timeout="6") as url:
        bootstrap = url.removeprefix("kafka://").split("?")[0]
        # The throughput contenders run in turns, --repeat times; each reports its best
        # run (as timeit does: on a shared 2-core machine, slower runs measure the noise)
        # and every run's end-to-end figure.
        contenders = {
            "raw_confluent_kafka": ("raw", lambda: raw_client(bootstrap, args.n)),
            "tidings": ("tidings", lambda: asyncio.run(tidings(url, args.n))),
            "tidings_batch": ("batch", lambda: asyncio.run(tidings(url, args.n, batch=True))),
        }
        runs: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.repeat):
            for name, (flag, run) in contenders.items():
                if flag in only:
                    runs.setdefault(name, []).append(run())
        for name, measured in runs.items():
            best = max(measured, key=lambda r: r["end_to_end_msg_per_s"])
            result[name] = {**best, "end_to_end_runs": [r["end_to_end_msg_per_s"]
                                                         for r in measured]}
        if "faststream" in only:
            result["faststream_at_least_once"] = faststream(
                args.faststream_python, bootstrap, args.fs_n, "ack")
            result["faststream_auto_commit"] = faststream(
                args.faststream_python, bootstrap, args.n, "default")
        if "latency" in only:
            paced = int(args.rate * args.seconds)
            result["latency"] = {"rate_msg_per_s": args.rate, "messages": paced,
                                 **two_process(args.rate, paced, url, args.seconds),
                                 "target_p99_ms": 50}
    tid, raw = result.get("tidings", {}), result.get("raw_confluent_kafka", {})
    result["ratios"] = {
        "tidings_over_raw": ratio(tid, raw),
        "tidings_batch_over_raw": ratio(result.get("tidings_batch", {}), raw),
        "tidings_over_faststream_at_least_once":
            ratio(tid, result.get("faststream_at_least_once", {})),
        "tidings_over_faststream_auto_commit":
            ratio(tid, result.get("faststream_auto_commit", {})),
        "targets": {"tidings_over_raw": 0.7, "tidings_over_faststream": 5},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
