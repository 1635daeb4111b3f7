"""Logging for a tidings service: JSON lines on stderr, INFO and up, librdkafka's
connection attempts kept at DEBUG. ``python examples/logging_setup.py``"""

import asyncio
import json
import logging

from tidings import App, RetryPolicy
from tidings.testing import TestBus


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": self.formatTime(record), "level": record.levelname,
                "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure_logging() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("tidings.kafka.librdkafka").setLevel(logging.WARNING)


async def main() -> None:
    app = App("billing", retry=RetryPolicy(max_attempts=2, backoff=0.01))

    @app.subscriber("payments")
    async def charge(payment: dict) -> None:
        if payment["card"] == "0000":
            raise ValueError("card refused")  # logged as a WARNING, then an ERROR

    async with TestBus(app) as bus:  # an in-memory bus, to show the log lines
        await app.publish("payments", {"card": "0000"})
        await bus.idle()


if __name__ == "__main__":
    configure_logging()
    asyncio.run(main())
