"""Console benchmark: the console's answers on a big embedded bus, and what it costs others.

Prints one JSON document. Figures:
- ``fill``: N messages (default 1,000,000) appended as conversations of four messages
  (an order's ORDER_CREATED, STOCK_RESERVED, PAYMENT_SUCCEEDED, ORDER_CONFIRMED: keyed
  by the order id, with id, correlation and causation headers, as tidings writes them)
  over four topics, and three groups with committed offsets on them.
- ``console_ms``: the median and max of ``--repeat`` HTTP calls to a ``tidings console``
  process on that bus: ``/api/topics``, ``/api/groups``, and conversation lookups by
  order id (a key), by correlation id and by a message id in the middle of a conversation.
- ``console_ms.first_lookup_after_start``: the first conversation lookup, asked as soon
  as the console answers: the console indexes the whole bus when it starts (in a private
  index of its own, never in the bus), and this lookup waits for that.
- ``publish``: throughput (messages/s) on a bus with no console and while a console is
  open on it (an event stream connected, ``/api/groups`` and a conversation asked every
  second), alternating: ``publish_many`` in batches of 1000 (``batched_*``), and one
  awaited ``publish`` at a time (``one_by_one_*``, a tenth as many messages).

- ``kafka`` (with ``--kafka N``): a tansu started here holding N messages written the
  same way; a conversation lookup there has no index to use, so it reads the newest
  ``SCAN_LIMIT`` records of every partition: the time of a lookup (found, and not found)
  and how many records it read.

Usage: python benchmarks/bench_console.py [--n 1000000] [--repeat 20] [--publish 100000]
       [--kafka 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tidings import App
from tidings._records import OutRecord, TopicPartition

STEPS = (("orders", "ORDER_CREATED"), ("inventory", "STOCK_RESERVED"),
         ("payments", "PAYMENT_SUCCEEDED"), ("orders", "ORDER_CONFIRMED"))
PAD = "x" * 120
TESTS = str(Path(__file__).resolve().parent.parent / "tests")


def conversation(n: int) -> list[OutRecord]:
    order = f"order-{n:08d}"
    ids = [f"{n:08d}-{step}" for step in range(4)]
    out = []
    for step, (topic, kind) in enumerate(STEPS):
        headers = {"tidings-id": ids[step]}
        if step:
            headers |= {"tidings-correlation-id": ids[0], "tidings-causation-id": ids[step - 1]}
        value = json.dumps({"type": kind, "order_id": order, "pad": PAD}).encode()
        out.append(OutRecord(topic, value, key=order, headers=headers))
    return out


async def fill(broker: str, n: int) -> dict[str, float]:
    started = time.perf_counter()
    async with App("bench-fill", broker=broker) as app:
        batch: list[OutRecord] = []
        for c in range(n // 4):
            batch += conversation(c)
            if len(batch) >= 4000:
                await app.transport.append(batch)
                batch = []
        if batch:
            await app.transport.append(batch)
        topics = await app.transport.describe_topics()
        for group, share in (("inventory", 1.0), ("payments", 1.0), ("orders", 0.999)):
            await app.transport.set_offsets(group, {
                TopicPartition(t.name, p): int(end * share)
                for t in topics for p, end in t.end_offsets.items()})
    return {"messages": n, "seconds": round(time.perf_counter() - started, 1)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_console(broker: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tidings.cli", "console", "--broker",
                                broker, "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("the console did not start")


def timed(client: httpx.Client, path: str, repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return {"median": round(statistics.median(times), 1), "max": round(max(times), 1)}


def console_figures(broker: str, n: int, repeat: int) -> dict[str, object]:
    process, url = start_console(broker)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            middle = n // 8
            started = time.perf_counter()
            client.get("/api/conversations/nothing").raise_for_status()
            first = round((time.perf_counter() - started) * 1000, 1)
            found = client.get(f"/api/conversations/order-{middle:08d}").json()["messages"]
            assert [m["type"] for m in found] == [kind for _, kind in STEPS], found
            return {
                "first_lookup_after_start": first,
                "topics": timed(client, "/api/topics", repeat),
                "groups": timed(client, "/api/groups", repeat),
                "conversation_by_order_id": timed(
                    client, f"/api/conversations/order-{middle:08d}", repeat),
                "conversation_by_correlation_id": timed(
                    client, f"/api/conversations/{middle + 1:08d}-0", repeat),
                "conversation_by_message_id": timed(
                    client, f"/api/conversations/{middle + 2:08d}-2", repeat),
                "conversation_unknown": timed(client, "/api/conversations/nothing", repeat),
            }
    finally:
        process.terminate()
        process.wait(10)


async def publish_rate(broker: str, count: int, *, one_by_one: bool = False) -> float:
    async with App("bench-pub", broker=broker) as app:
        await app.publish("warmup", {})
        payloads = [{"type": "ORDER_CREATED", "order_id": f"o-{i}", "pad": PAD}
                    for i in range(count)]
        started = time.perf_counter()
        if one_by_one:
            for payload in payloads:
                await app.publish("orders", payload, key=payload["order_id"])
        else:
            for i in range(0, count, 1000):
                await app.publish_many("orders", payloads[i:i + 1000],
                                       key=lambda p: p["order_id"])
        return count / (time.perf_counter() - started)


def watch(url: str, stop: threading.Event) -> None:
    """What an open console page does: an event stream, and groups asked every second."""
    with httpx.Client(base_url=url, timeout=30) as client, \
            client.stream("GET", "/api/events") as stream:
        lines = stream.iter_lines()
        while not stop.is_set():
            next(lines)
            client.get("/api/groups")
            client.get("/api/conversations/o-1")
            stop.wait(1.0)


def publish_figures(tmp: Path, count: int, rounds: int = 3) -> dict[str, object]:
    """Publish rates on one bus with no console and with one open (its page's event
    stream connected, groups asked every second, a conversation looked up every second),
    alternating; batched and one awaited publish at a time (a tenth as many)."""
    rates: dict[str, list[float]] = {}
    for r in range(rounds):
        for mode, n in (("batched", count), ("one_by_one", count // 10)):
            one = mode == "one_by_one"
            broker = f"sqlite:///{tmp}/pub-{mode}-{r}.db"
            rates.setdefault(f"{mode}_console_closed", []).append(
                asyncio.run(publish_rate(broker, n, one_by_one=one)))
            process, url = start_console(broker)
            stop = threading.Event()
            watcher = threading.Thread(target=watch, args=(url, stop), daemon=True)
            watcher.start()
            try:
                rates.setdefault(f"{mode}_console_open", []).append(
                    asyncio.run(publish_rate(broker, n, one_by_one=one)))
            finally:
                stop.set()
                process.terminate()
                process.wait(10)
    return {label: {"median_msg_per_s": round(statistics.median(v)),
                    "runs": [round(x) for x in v]} for label, v in rates.items()}


async def kafka_figures(n: int, repeat: int) -> dict[str, object]:
    from tidings.console._conversation import SCAN_LIMIT, find_records

    sys.path.insert(0, TESTS)
    from kafka_broker import running_tansu  # type: ignore[import-not-found]

    with running_tansu(session_timeout="6") as url:
        filled = await fill(url, n)
        async with App("bench-lookup", broker=url) as app:
            topics = [t for t in await app.transport.describe_topics()
                      if not t.name.startswith("tidings.")]
            window = sum(min(SCAN_LIMIT, end - t.start_offsets.get(p, 0))
                         for t in topics for p, end in t.end_offsets.items())
            figures: dict[str, object] = {"fill": filled, "partitions": sum(
                len(t.end_offsets) for t in topics), "records_read_per_lookup": window}
            newest = n // 4 - 1
            for label, wanted, expect in (("found", f"order-{newest:08d}", 4),
                                          ("not_found", "nothing", 0)):
                times = []
                for _ in range(max(1, repeat // 4)):
                    started = time.perf_counter()
                    found = await find_records(app.transport, wanted, topics)
                    times.append((time.perf_counter() - started) * 1000)
                    assert len(found) == expect, (label, len(found))
                figures[f"lookup_ms_{label}"] = {"median": round(statistics.median(times)),
                                                 "max": round(max(times))}
            return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--publish", type=int, default=100_000)
    parser.add_argument("--kafka", type=int, default=0,
                        help="also time lookups on a tansu holding this many messages")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = f"sqlite:///{tmp}/bus.db"
        result: dict[str, object] = {"fill": asyncio.run(fill(broker, args.n))}
        result["console_ms"] = console_figures(broker, args.n, args.repeat)
        result["publish"] = publish_figures(Path(tmp), args.publish)
    if args.kafka:
        result["kafka"] = asyncio.run(kafka_figures(args.kafka, args.repeat))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
