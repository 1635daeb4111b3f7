"""Embedded-bus benchmark: throughput, CPU per message and latency, with a raw baseline.

Prints one JSON document. Figures:
- ``baseline``: raw sqlite3 in the same run: batched insert and range read (with JSON
  decode and the same pydantic validation) of the same rows, WAL + synchronous=NORMAL.
- ``throughput``: N events of ~200 B published with ``publish_many`` (durable batches),
  then consumed by a typed (pydantic) handler with commits; ``end_to_end_msg_per_s`` is
  N over publish time + consume time.
- ``cpu``: consumer-process CPU per consumed message, total and minus the baseline's
  per-row read+validate cost (the framework's share).
- ``latency``: publish-to-handler p50/p99 across two processes at a paced rate.
- ``observability`` (with ``--observability``): publish and consume CPU per message
  with no middleware, with tracing (the OpenTelemetry SDK, spans batched to an exporter
  that drops them) and with Prometheus metrics, in alternating runs of the same process.

Usage: python benchmarks/bench_embedded.py [--n 100000] [--rate 1000] [--seconds 5]
       [--broker sqlite:///path]   (default: a fresh SQLite file in a temp dir)
       [--observability [--repeat 3]]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel

from tidings import App, Middleware

PAYLOAD_PAD = "x" * 120  # makes the encoded event ~200 bytes


class Event(BaseModel):
    """The benchmark's event: ~200 bytes as JSON."""

    n: int
    sent: float
    user: str
    kind: str
    pad: str


def make_event(n: int) -> dict[str, object]:
    return {"n": n, "sent": time.time(), "user": f"user-{n % 1000}", "kind": "USER_REGISTERED",
            "pad": PAYLOAD_PAD}


def baseline(n: int, directory: Path) -> dict[str, float]:
    """Raw sqlite3: batched insert and range read + validate of the same rows."""
    db = sqlite3.connect(directory / "raw.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, k TEXT, v BLOB, ts REAL)")
    rows = [(f"k{i % 64}", json.dumps(make_event(i)).encode(), time.time()) for i in range(n)]
    started = time.perf_counter()
    for i in range(0, n, 1000):
        db.execute("BEGIN")
        db.executemany("INSERT INTO log (k, v, ts) VALUES (?, ?, ?)", rows[i : i + 1000])
        db.execute("COMMIT")
    insert_s = time.perf_counter() - started
    started, cpu = time.perf_counter(), time.process_time()
    last = 0
    while True:
        batch = db.execute("SELECT id, k, v, ts FROM log WHERE id > ? ORDER BY id LIMIT 1000",
                           (last,)).fetchall()
        if not batch:
            break
        for row in batch:
            Event.model_validate_json(row[2])
        last = batch[-1][0]
    read_s, read_cpu = time.perf_counter() - started, time.process_time() - cpu
    db.close()
    return {"insert_rows_per_s": round(n / insert_s), "read_validate_rows_per_s": round(n / read_s),
            "read_validate_cpu_us_per_row": round(read_cpu / n * 1e6, 2)}


async def throughput(n: int, broker: str, middleware: Sequence[Middleware] = (),
                     topic: str = "bench") -> dict[str, float]:
    """Publish N, then consume N through a typed handler with commits."""
    producer = App("bench-producer", broker=broker, middleware=middleware)
    async with producer:
        events = [make_event(i) for i in range(n)]
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(0, n, 1000):
            await producer.publish_many(topic, events[i : i + 1000], key=lambda e: e["user"])
        publish_s = time.perf_counter() - started
        publish_cpu = time.process_time() - cpu

    consumer = App("bench-consumer", broker=broker, middleware=middleware)
    done = asyncio.Event()
    seen = 0

    @consumer.subscriber(topic)
    async def handle(event: Event) -> None:
        nonlocal seen
        seen += 1
        if seen == n:
            done.set()

    started, cpu = time.perf_counter(), time.process_time()
    async with consumer:
        await done.wait()
        consume_s = time.perf_counter() - started
        consume_cpu = time.process_time() - cpu
    return {
        "messages": n,
        "publish_msg_per_s": round(n / publish_s),
        "consume_msg_per_s": round(n / consume_s),
        "end_to_end_msg_per_s": round(n / (publish_s + consume_s)),
        "publish_cpu_us_per_msg": round(publish_cpu / n * 1e6, 2),
        "consume_cpu_us_per_msg": round(consume_cpu / n * 1e6, 2),
    }


def _variants() -> dict[str, Callable[[], list[Middleware]]]:
    """No middleware, tracing, metrics. Imported here: the other figures are measured
    without the OpenTelemetry SDK and prometheus-client in the heap (a bigger heap makes
    every full garbage collection dearer)."""
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from tidings.otel import TracingMiddleware
    from tidings.prometheus import PrometheusMetrics

    class Dropped(SpanExporter):
        """Takes the spans and keeps none: the cost measured is tidings' and the SDK's."""

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    def tracing() -> list[Middleware]:
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Dropped()))
        return [TracingMiddleware(provider)]

    return {"none": list, "tracing": tracing, "metrics": lambda: [PrometheusMetrics()]}


def observability(n: int, directory: Path, repeat: int) -> dict[str, object]:
    """CPU per message with no middleware, tracing, and metrics; best of ``repeat``
    alternating runs each, each on a fresh topic of its own bus."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in _variants()}
    for r in range(repeat):
        for name, make in _variants().items():
            broker = f"sqlite:///{directory}/obs-{name}-{r}.db"
            runs[name].append(asyncio.run(throughput(n, broker, make())))
    best = {name: {"publish_cpu_us_per_msg": min(x["publish_cpu_us_per_msg"] for x in xs),
                   "consume_cpu_us_per_msg": min(x["consume_cpu_us_per_msg"] for x in xs),
                   "end_to_end_msg_per_s": max(x["end_to_end_msg_per_s"] for x in xs)}
            for name, xs in runs.items()}
    none = best["none"]
    for name in ("tracing", "metrics"):
        for what in ("publish", "consume"):
            key = f"{what}_cpu_us_per_msg"
            best[name][f"{what}_added_us_per_msg"] = round(best[name][key] - none[key], 2)
    return {"messages": n, "repeat": repeat, **best}


def _child(role: str, broker: str, arg: float, seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, "--child", role, "--broker", broker, "--arg", str(arg),
         "--seconds", str(seconds)],
        stdout=subprocess.PIPE,
    )


def two_process(role_rate: float, n: int, broker: str, seconds: float) -> dict[str, float]:
    """Consumer process plus producer process; returns the consumer's report."""
    consumer = _child("consume", broker, n, seconds)
    assert consumer.stdout is not None
    assert consumer.stdout.readline().strip() == b"ready"
    started = time.perf_counter()
    producer = _child("produce", broker, role_rate, seconds)
    producer.wait()
    out, _ = consumer.communicate(timeout=300)
    report: dict[str, float] = json.loads(out)
    report["wall_s"] = round(time.perf_counter() - started, 3)
    return report


async def child_consume(broker: str, expected: int) -> None:
    app = App("bench-latency", broker=broker)
    latencies: list[float] = []
    done = asyncio.Event()

    @app.subscriber("latency")
    async def handle(event: Event) -> None:
        latencies.append(time.time() - event.sent)
        if len(latencies) >= expected:
            done.set()

    async with app:
        await app.wait_until_assigned()
        print("ready", flush=True)
        first = time.perf_counter()
        await asyncio.wait_for(done.wait(), 600)
        wall = time.perf_counter() - first
    ordered = sorted(latencies)
    print(json.dumps({
        "received": len(latencies),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
        "consumer_wall_s": round(wall, 3),
    }))


async def child_produce(broker: str, rate: float, seconds: float) -> None:
    app = App("bench-producer", broker=broker)
    async with app:
        total = int(rate * seconds)
        started = time.perf_counter()
        for i in range(total):
            due = started + i / rate
            pause = due - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
            await app.publish("latency", make_event(i), key=f"user-{i % 1000}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--broker", default=None)
    parser.add_argument("--child", choices=["consume", "produce"], default=None)
    parser.add_argument("--arg", type=float, default=0.0)
    parser.add_argument("--observability", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.child == "consume":
        asyncio.run(child_consume(args.broker, int(args.arg)))
        return
    if args.child == "produce":
        asyncio.run(child_produce(args.broker, args.arg, args.seconds))
        return
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        if args.observability:
            print(json.dumps({"machine": {"cpus": os.cpu_count(),
                                          "python": sys.version.split()[0]},
                              "observability": observability(args.n, directory, args.repeat)},
                             indent=2))
            return
        broker = args.broker or f"sqlite:///{directory}/bus.db"
        base = baseline(args.n, directory)
        result = asyncio.run(throughput(args.n, broker))
        framework_cpu = result["consume_cpu_us_per_msg"] - base["read_validate_cpu_us_per_row"]
        paced = int(args.rate * args.seconds)
        latency = two_process(args.rate, paced, broker.replace("bus.db", "lat.db"), args.seconds)
        print(json.dumps({
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "broker": broker.split("?")[0].split(":")[0],
            "baseline_raw_sqlite": base,
            "throughput": result,
            "cpu": {"consumer_total_us_per_msg": result["consume_cpu_us_per_msg"],
                    "framework_us_per_msg": round(framework_cpu, 2),
                    "target_framework_us_per_msg": 30},
            "latency": {"rate_msg_per_s": args.rate, "messages": paced, **latency,
                        "target_p99_ms": 10},
            "targets": {"end_to_end_msg_per_s": 30_000},
        }, indent=2))


if __name__ == "__main__":
    main()
