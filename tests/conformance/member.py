"""A group member for the conformance suite, run as its own OS process.

Usage: python member.py BROKER TOPIC GROUP OUTFILE [--concurrency N] [--sleep S]
Every handled message is appended to OUTFILE as one JSON line (atomic O_APPEND write),
so a SIGKILL loses nothing that was reported as handled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from tidings import App, Message


def build(broker: str, topic: str, group: str, outfile: str, concurrency: int, sleep: float) -> App:
    app = App(group, broker=broker, shutdown_timeout=10)
    fd = os.open(outfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @app.subscriber(topic, group=group, concurrency=concurrency)
    async def handle(payload: dict, message: Message) -> None:  # type: ignore[type-arg]
        if sleep:
            await asyncio.sleep(sleep)
        line = {"n": payload["n"], "key": message.key, "pid": os.getpid(),
                "partition": message.partition, "offset": message.offset}
        os.write(fd, (json.dumps(line) + "\n").encode())

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("broker", "topic", "group", "outfile"):
        parser.add_argument(name)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args()
    app = build(args.broker, args.topic, args.group, args.outfile, args.concurrency, args.sleep)
    print("ready", flush=True)
    app.run()
    sys.exit(0)


if __name__ == "__main__":
    main()
