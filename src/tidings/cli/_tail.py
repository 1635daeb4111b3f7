"""``tidings tail``: print a topic's messages as they arrive, optionally only some."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click

from .._consumer import Consumer, ConsumerSpec
from .._records import Record, Start
from .._waiting import wait_event
from ._common import connected, run_async

__all__ = ["tail"]

#: A record past ``--limit`` waits this long for a retry that never comes: the tail stops
#: first, so it is neither printed nor committed (the group still sees it next time).
_NEVER = 3600.0


@click.command()
@click.argument("topic")
@click.option("--group", default=None, help="Consume as a member of GROUP (commits offsets).")
@click.option("--from", "start", type=click.Choice(["earliest", "latest"]), default="latest",
              show_default=True, help="Where to begin without committed offsets.")
@click.option("--key", default=None, help="Only messages with this key.")
@click.option("--grep", "pattern", default=None, metavar="REGEX",
              help="Only messages whose key or value matches REGEX.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Stop after printing this many messages.")
@click.option("--timeout", type=float, default=None, help="Stop after this many idle seconds.")
@click.pass_context
@run_async
async def tail(ctx: click.Context, topic: str, group: str | None, start: str, key: str | None,
               pattern: str | None, limit: int | None, timeout: float | None) -> None:
    """Print messages of TOPIC as they arrive (to follow one order: --key or --grep)."""
    wanted = _matcher(key, pattern)
    done = asyncio.Event()
    seen = printed = 0

    async def show(record: Record, attempt: int) -> float | None:
        nonlocal seen, printed
        if done.is_set():
            return _NEVER
        seen += 1
        if wanted(record):
            printed += 1
            _print_record(record, ctx.obj["json"])
            if limit is not None and printed >= limit:
                done.set()
        return None

    async with connected(ctx) as app:
        await app.transport.ensure_topic(topic)
        spec = ConsumerSpec(group=group, topics=(topic,), start=Start(start), client="tidings-tail",
                            max_in_flight=100, shutdown_timeout=2)
        consumer = Consumer(app.transport, spec, show)
        await consumer.start()
        try:
            await _wait_idle(done, lambda: seen, timeout)
        finally:
            await consumer.stop()


def _matcher(key: str | None, pattern: str | None) -> Callable[[Record], bool]:
    try:
        regex = re.compile(pattern) if pattern is not None else None
    except re.error as exc:
        raise click.BadParameter(f"not a regular expression: {exc}", param_hint="--grep") from None

    def wanted(record: Record) -> bool:
        if key is not None and record.key != key:
            return False
        if regex is None:
            return True
        # The value as printed (JSON re-spaced), so what a user sees is what matches.
        text = _shown(_value(record))
        return bool(regex.search(text) or (record.key and regex.search(record.key)))

    return wanted


async def _wait_idle(done: asyncio.Event, progress: Callable[[], int], idle: float | None) -> None:
    last = -1
    while not done.is_set():
        if idle is not None and progress() == last:
            return
        last = progress()
        await wait_event(done, idle if idle is not None else 3600)


def _value(record: Record) -> Any:
    try:
        return json.loads(record.value)
    except ValueError:
        return record.value.decode("utf-8", "replace")


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _print_record(record: Record, as_json: bool) -> None:
    value = _value(record)
    if as_json:
        click.echo(json.dumps({"topic": record.topic, "partition": record.partition,
                               "offset": record.offset, "key": record.key,
                               "timestamp": record.timestamp, "headers": dict(record.headers),
                               "value": value}))
    else:
        when = datetime.fromtimestamp(record.timestamp).isoformat(timespec="milliseconds")
        click.echo(f"{when} {record.topic}[{record.partition}]@{record.offset} "
                   f"key={record.key} {_shown(value)}")
