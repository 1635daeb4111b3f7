"""MQTT benchmark: tidings against the raw client (paho-mqtt), on a mosquitto it starts.

Prints one JSON document. Both contenders move the same N events of ~200 B (the
``Event`` of ``bench_embedded``) through one topic, end to end in one process, at QoS 1
both ways, and do the same useful work per message: validate it into the pydantic
model, then acknowledge it (PUBACK) only after that.

- ``raw_paho``: paho-mqtt 2.x driven by the asyncio loop as tidings drives it (socket
  reader and writer callbacks, no thread), a shared subscription with manual acks
  (each message acknowledged right after it was validated), and a publisher sending
  batches of 1,000, each awaited until every PUBACK is in.
- ``raw_paho_headers``: the same, each message carrying the four user properties a
  tidings message carries (paho decodes MQTT 5 properties in Python: this is their cost).
- ``tidings``: ``publish_many`` in batches of 1,000, each awaited (every PUBACK), and a
  typed handler (``async def handle(event: Event)``) in a group (a shared
  subscription), acknowledged when its offset commits (every 100 ms, past handled ones).
  Its messages carry those four user properties too; it decodes the PUBLISH packets it
  receives itself (``tidings/backends/mqtt/_wire.py``), not through paho's
  ``Properties``, and reads the socket ahead (``_driver.py``).

``end_to_end_msg_per_s`` is N over the time from the first publish to the last handled
message; ``cpu_us_per_msg`` is this process's CPU time over that span, per message
(publisher and consumer together; mosquitto's is not counted). ``ratio`` is tidings'
end-to-end rate over the raw client's (best runs), ``cpu_ratio`` the raw client's CPU per
message over tidings' (the steadier figure on a shared machine). Each contender runs ``--repeat``
times, in turns.

Usage: python benchmarks/bench_mqtt.py [--n 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from bench_embedded import Event, make_event
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tidings import App

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from mqtt_broker import running_mosquitto  # type: ignore[import-not-found]  # noqa: E402

BATCH = 1000


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def payloads(n: int) -> list[bytes]:
    return [json.dumps(make_event(i)).encode() for i in range(n)]


class RawClient:
    """paho on the asyncio loop: the minimum tidings' own connection does."""

    def __init__(self, client_id: str, *, manual_ack: bool) -> None:
        self.loop = asyncio.get_running_loop()
        c = self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                      protocol=paho.MQTTv5, manual_ack=manual_ack)
        c.max_inflight_messages_set(BATCH)
        c.max_queued_messages_set(0)
        c.on_socket_open = lambda cl, _u, s: self.loop.add_reader(s, cl.loop_read)
        c.on_socket_close = lambda _c, _u, s: self.loop.remove_reader(s)
        c.on_socket_register_write = lambda cl, _u, s: self.loop.add_writer(s, cl.loop_write)
        c.on_socket_unregister_write = lambda _c, _u, s: self.loop.remove_writer(s)

    async def connect(self, port: int) -> None:
        ready = self.loop.create_future()
        self.client.on_connect = lambda *_: ready.done() or ready.set_result(None)
        props = Properties(PacketTypes.CONNECT)
        props.ReceiveMaximum = BATCH
        self.client.connect("127.0.0.1", port, properties=props)
        await ready

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_write()


def header_properties() -> Properties:
    """The user properties a tidings message carries (id, source, content type, time)."""
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("tidings-timestamp", f"{time.time():.6f}"),
                          ("tidings-id", uuid.uuid4().hex), ("tidings-source", "bench"),
                          ("content-type", "application/json")]
    return props


async def raw_run(port: int, bodies: list[bytes], props: Properties | None = None,
                  ) -> dict[str, Any]:
    topic, n = f"bench-{uuid.uuid4().hex[:8]}", len(bodies)
    handled = 0
    done = asyncio.Event()
    sub = RawClient(f"raw-sub-{topic}", manual_ack=True)

    def on_message(client: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        nonlocal handled
        Event.model_validate_json(message.payload)
        client.ack(message.mid, 1)
        handled += 1
        if handled == n:
            done.set()

    sub.client.on_message = on_message
    await sub.connect(port)
    subscribed = sub.loop.create_future()
    sub.client.on_subscribe = lambda *_: subscribed.set_result(None)
    sub.client.subscribe(f"$share/raw/{topic}", qos=1)
    await subscribed
    pub = RawClient(f"raw-pub-{topic}", manual_ack=False)
    await pub.connect(port)
    waiting: dict[int, asyncio.Future[None]] = {}

    def on_publish(_c: paho.Client, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        waiting.pop(mid).set_result(None)

    pub.client.on_publish = on_publish
    started, cpu0 = time.perf_counter(), cpu()
    for first in range(0, n, BATCH):
        futures = []
        for body in bodies[first:first + BATCH]:
            future = pub.loop.create_future()
            waiting[pub.client.publish(topic, body, qos=1, properties=props).mid] = future
            futures.append(future)
        await asyncio.gather(*futures)
    await done.wait()
    return _figures(n, started, cpu0, pub.disconnect, sub.disconnect)


async def tidings_run(url: str, bodies: list[bytes]) -> dict[str, Any]:
    topic, n = f"bench-{uuid.uuid4().hex[:8]}", len(bodies)
    events = [Event.model_validate_json(body) for body in bodies]
    handled = 0
    done = asyncio.Event()
    consumer, producer = App("bench-consumer", broker=url), App("bench-producer", broker=url)

    @consumer.subscriber(topic, group="bench")
    async def handle(event: Event) -> None:
        nonlocal handled
        handled += 1
        if handled == n:
            done.set()

    async with consumer, producer:
        started, cpu0 = time.perf_counter(), cpu()
        for first in range(0, n, BATCH):
            await producer.publish_many(topic, events[first:first + BATCH])
        await done.wait()
        return _figures(n, started, cpu0)


def _figures(n: int, started: float, cpu0: float, *closers: Any) -> dict[str, Any]:
    elapsed, spent = time.perf_counter() - started, cpu() - cpu0
    for close in closers:
        close()
    return {"end_to_end_msg_per_s": round(n / elapsed), "seconds": round(elapsed, 3),
            "cpu_us_per_msg": round(spent / n * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    bodies = payloads(args.n)
    runs: dict[str, list[dict[str, Any]]] = {"raw_paho": [], "raw_paho_headers": [],
                                             "tidings": []}
    # mosquitto tells clients a Receive Maximum of max_inflight_messages (default 20);
    # tidings keeps to it, paho's own window does not: both get 1,000 here.
    with running_mosquitto(extra=f"max_inflight_messages {BATCH}") as url:
        port = int(url.rsplit(":", 1)[1])
        for _ in range(args.repeat):
            runs["raw_paho"].append(asyncio.run(raw_run(port, bodies)))
            runs["raw_paho_headers"].append(
                asyncio.run(raw_run(port, bodies, header_properties())))
            runs["tidings"].append(asyncio.run(tidings_run(url, bodies)))
    best = {name: max(r, key=lambda f: f["end_to_end_msg_per_s"]) for name, r in runs.items()}
    print(json.dumps({
        "n": args.n, "payload_bytes": len(bodies[0]), "qos": 1,
        **{name: {**figures, "runs": [r["end_to_end_msg_per_s"] for r in runs[name]]}
           for name, figures in best.items()},
        "ratio": round(best["tidings"]["end_to_end_msg_per_s"]
                       / best["raw_paho"]["end_to_end_msg_per_s"], 2),
        "cpu_ratio": round(best["raw_paho"]["cpu_us_per_msg"]
                           / best["tidings"]["cpu_us_per_msg"], 2),
        "load_average": os.getloadavg()[0],
    }, indent=2))


if __name__ == "__main__":
    main()
