"""A member whose handler fails its first attempts, with a non-blocking retry policy,
for the suite's crash-during-backoff test; run as its own OS process where the backend
allows (``python -m tidings.testing.conformance._retry_member BROKER TOPIC GROUP
OUTFILE FAILS BACKOFF``), else built in-process by :func:`build`.

Each attempt is appended to OUTFILE as one JSON line before the handler fails or
succeeds, so a SIGKILL loses nothing that was reported.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from ... import App, Message, RetryPolicy


def build(broker: str, topic: str, group: str, outfile: str, fails: int,
          backoff: float) -> App:
    """An App whose subscriber fails attempts 1..``fails`` of every message, retried
    without blocking after ``backoff`` seconds each time."""
    app = App(group, broker=broker, shutdown_timeout=10)
    fd = os.open(outfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    policy = RetryPolicy(max_attempts=fails + 2, backoff=backoff, multiplier=1.0, jitter=0,
                         blocking=False)

    @app.subscriber(topic, group=group, retry=policy)
    async def handle(payload: dict[str, Any], message: Message) -> None:
        line = {"n": payload["n"], "attempt": message.attempt, "at": time.time(),
                "pid": os.getpid()}
        os.write(fd, (json.dumps(line) + "\n").encode())
        if message.attempt <= fails:
            raise ConnectionError(f"attempt {message.attempt} fails")

    return app


def main() -> None:
    """Run until SIGTERM (or SIGKILL); print ``ready`` once built."""
    broker, topic, group, outfile, fails, backoff = sys.argv[1:7]
    app = build(broker, topic, group, outfile, int(fails), float(backoff))
    print("ready", flush=True)
    app.run()


if __name__ == "__main__":
    main()
