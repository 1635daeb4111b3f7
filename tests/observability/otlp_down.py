"""Child of test_otlp_down: tracing configured from the environment towards an endpoint
that does not answer; handles and publishes 200 messages, then prints how many."""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from tidings import App, testing
from tidings.otel import TracingMiddleware, configure_tracing


async def main() -> None:
    provider = configure_tracing("down")
    assert provider is not None
    app = App("down", broker=testing.memory_url(), middleware=[TracingMiddleware()])
    handled: list[int] = []
    all_handled = asyncio.Event()

    @app.subscriber("t")
    async def handle(body: dict[str, int]) -> None:
        handled.append(body["n"])
        if len(handled) == 200:
            all_handled.set()

    started = time.monotonic()
    async with app:
        for n in range(200):
            await app.publish("t", {"n": n})
            if n % 50 == 0:
                await asyncio.sleep(0.3)  # several export attempts fail meanwhile
        await asyncio.wait_for(all_handled.wait(), 60)
    print(f"handled {len(handled)} in {time.monotonic() - started:.1f} s", flush=True)
    provider.shutdown()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
    asyncio.run(main())
