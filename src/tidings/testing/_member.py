"""A group member for the conformance suite, run as its own OS process.

Usage: python -m tidings.testing._member BROKER TOPIC GROUP OUTFILE [--concurrency N] [--sleep S]
Every handled message is appended to OUTFILE as one JSON line (atomic O_APPEND write),
so a SIGKILL loses nothing that was reported as handled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from .. import App, Message


def build(broker: str, topic: str, group: str, outfile: str, concurrency: int, sleep: float) -> App:
    """An App whose one subscriber appends what it handles to ``outfile``."""
    app = App(group, broker=broker, shutdown_timeout=10)
    fd = os.open(outfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @app.subscriber(topic, group=group, concurrency=concurrency)
    async def handle(payload: dict[str, int], message: Message) -> None:
        if sleep:
            await asyncio.sleep(sleep)
        line = {"n": payload["n"], "key": message.key, "pid": os.getpid(),
                "partition": message.partition, "offset": message.offset}
        os.write(fd, (json.dumps(line) + "\n").encode())

    return app


def main() -> None:
    """Run one member until SIGTERM (or SIGKILL); print ``ready`` once it is built."""
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
