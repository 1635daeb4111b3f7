"""The ``tidings`` command: run services and look inside the bus.

Every command takes ``--broker URL`` (default ``$TIDINGS_BROKER``, else the embedded
``sqlite:///.tidings/bus.db``) and prints tables, or JSON with ``--json``. Errors are one
line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import click

from .._app import DEFAULT_BROKER, App
from .._errors import TidingsError
from .._records import Start, TopicPartition
from .._waiting import wait_event
from ._admin import group_rows, topic_rows
from ._console import commands as console_commands
from ._dlq import dlq
from ._output import emit
from ._projections import projections
from ._sagas import sagas

__all__ = ["main"]

P = ParamSpec("P")
R = TypeVar("R")


def run_async(func: Callable[P, Awaitable[R]]) -> Callable[P, R]:
    """Run an async command, turning tidings errors into one clean line."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return asyncio.run(func(*args, **kwargs))  # type: ignore[arg-type]
        except TidingsError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:  # the one place a surprise becomes a line, not a traceback
            raise click.ClickException(f"unexpected {type(exc).__name__}: {exc}") from None

    return wrapper


@contextlib.asynccontextmanager
async def connected(ctx: click.Context) -> AsyncIterator[App]:
    """An App connected to the broker the command names, with no subscribers."""
    app = App("tidings-cli", broker=ctx.obj["broker"], shutdown_timeout=5)
    async with app:
        yield app


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--broker", envvar="TIDINGS_BROKER", default=DEFAULT_BROKER, show_default=True,
              help="Broker URL: sqlite:///path, memory://, kafka://host:port.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.version_option(package_name="tidings")
@click.pass_context
def cli(ctx: click.Context, broker: str, as_json: bool) -> None:
    """tidings: a durable message bus for event-driven Python services."""
    ctx.obj = {"broker": broker, "json": as_json}


@cli.command()
@click.argument("target", metavar="MODULE:APP")
@click.pass_context
def run(ctx: click.Context, target: str) -> None:
    """Run the App at MODULE:APP until SIGTERM or SIGINT."""
    os.environ["TIDINGS_BROKER"] = ctx.obj["broker"]
    app = _load_app(target)
    try:
        app.run()
    except TidingsError as exc:
        raise click.ClickException(str(exc)) from None


def _load_app(target: str) -> App:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise click.BadParameter("expected MODULE:APP, e.g. shop.main:app", param_hint="target")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.ClickException(f"cannot import {module_name!r}: {exc}") from None
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise click.ClickException(f"{target} is not a tidings App (found {type(app).__name__})")
    return app


@cli.command()
@click.argument("topic")
@click.argument("payload", metavar="JSON")
@click.option("--key", default=None, help="Message key (same key, same partition, in order).")
@click.option("--header", "headers", multiple=True, metavar="NAME=VALUE", help="A header.")
@click.option("--delay", type=float, default=None, help="Deliver after this many seconds.")
@click.pass_context
@run_async
async def publish(ctx: click.Context, topic: str, payload: str, key: str | None,
                  headers: tuple[str, ...], delay: float | None) -> None:
    """Publish one JSON message to TOPIC."""
    try:
        value = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="JSON") from None
    pairs = dict(_header(h) for h in headers)
    async with connected(ctx) as app:
        published = await app.publish(topic, value, key=key, headers=pairs, delay=delay)
    data = {"id": published.id, "topic": topic, "partition": published.partition,
            "offset": published.offset}
    if ctx.obj["json"]:
        click.echo(json.dumps(data))
    elif published.offset is None:
        click.echo(f"scheduled {published.id} for {topic} in {delay:g} s")
    else:
        click.echo(f"published {published.id} to {topic}[{published.partition}]@{published.offset}")


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"expected NAME=VALUE, got {text!r}", param_hint="--header")
    return name, value


@cli.command()
@click.argument("topic")
@click.option("--group", default=None, help="Consume as a member of GROUP (commits offsets).")
@click.option("--from", "start", type=click.Choice(["earliest", "latest"]), default="latest",
              show_default=True, help="Where to begin without committed offsets.")
@click.option("--limit", type=int, default=None, help="Stop after this many messages.")
@click.option("--timeout", type=float, default=None, help="Stop after this many idle seconds.")
@click.pass_context
@run_async
async def tail(ctx: click.Context, topic: str, group: str | None, start: str,
               limit: int | None, timeout: float | None) -> None:
    """Print messages of TOPIC as they arrive."""
    from .._consumer import Consumer, ConsumerSpec
    from .._records import Record

    done = asyncio.Event()
    count = 0

    async def show(record: Record, attempt: int) -> float | None:
        nonlocal count
        count += 1
        _print_record(record, ctx.obj["json"])
        if limit is not None and count >= limit:
            done.set()
        return None

    async with connected(ctx) as app:
        await app.transport.ensure_topic(topic)
        spec = ConsumerSpec(group=group, topics=(topic,), start=Start(start), client="tidings-tail",
                            max_in_flight=100, shutdown_timeout=2)
        consumer = Consumer(app.transport, spec, show)
        await consumer.start()
        try:
            await _wait_idle(done, lambda: count, timeout)
        finally:
            await consumer.stop()


async def _wait_idle(done: asyncio.Event, progress: Callable[[], int], idle: float | None) -> None:
    last = -1
    while not done.is_set():
        if idle is not None and progress() == last:
            return
        last = progress()
        await wait_event(done, idle if idle is not None else 3600)


def _print_record(record: Any, as_json: bool) -> None:
    try:
        value: Any = json.loads(record.value)
    except ValueError:
        value = record.value.decode("utf-8", "replace")
    if as_json:
        click.echo(json.dumps({"topic": record.topic, "partition": record.partition,
                               "offset": record.offset, "key": record.key,
                               "timestamp": record.timestamp, "headers": dict(record.headers),
                               "value": value}))
    else:
        when = datetime.fromtimestamp(record.timestamp).isoformat(timespec="milliseconds")
        shown = json.dumps(value) if not isinstance(value, str) else value
        click.echo(f"{when} {record.topic}[{record.partition}]@{record.offset} "
                   f"key={record.key} {shown}")


@cli.command()
@click.pass_context
@run_async
async def topics(ctx: click.Context) -> None:
    """List topics with their partitions and end offsets."""
    async with connected(ctx) as app:
        data, rows = topic_rows(await app.transport.describe_topics())
    emit(ctx.obj["json"], data, ["TOPIC", "PARTITIONS", "MESSAGES", "END OFFSETS"], rows,
         "no topics")


@cli.command()
@click.pass_context
@run_async
async def groups(ctx: click.Context) -> None:
    """List consumer groups: members, their partitions, and lag per topic."""
    async with connected(ctx) as app:
        data, rows = await group_rows(app.transport)
    emit(ctx.obj["json"], data, ["GROUP", "TOPIC", "MEMBERS", "ASSIGNMENT", "LAG"], rows,
         "no groups")


@cli.command("reset-offsets")
@click.argument("group")
@click.argument("topic")
@click.option("--to", "to", required=True, metavar="earliest|latest|OFFSET|ISO-TIME",
              help="Where the group resumes: an end, an offset for every partition, or a time.")
@click.pass_context
@run_async
async def reset_offsets(ctx: click.Context, group: str, topic: str, to: str) -> None:
    """Move GROUP's committed offsets on TOPIC (replay). Stop the group's members first."""
    async with connected(ctx) as app:
        transport = app.transport
        info = {t.name: t for t in await transport.describe_topics()}.get(topic)
        if info is None:
            raise click.ClickException(f"unknown topic {topic!r}")
        offsets = await _target_offsets(transport, info, to)
        positions = {TopicPartition(topic, p): o for p, o in offsets.items()}
        await transport.set_offsets(group, positions)
    click.echo(json.dumps(offsets) if ctx.obj["json"] else
               f"{group} on {topic} now at " + ", ".join(f"[{p}]@{o}" for p, o in offsets.items()))


async def _target_offsets(transport: Any, info: Any, to: str) -> dict[int, int]:
    if to == "earliest":
        return dict(info.start_offsets)
    if to == "latest":
        return dict(info.end_offsets)
    if to.isdigit():
        return dict.fromkeys(range(info.partitions), int(to))
    try:
        when = datetime.fromisoformat(to)
    except ValueError:
        raise click.BadParameter(f"{to!r} is not earliest, latest, an offset or an ISO time",
                                 param_hint="--to") from None
    result: dict[int, int] = await transport.offsets_for_time(info.name, when.timestamp())
    return result


cli.add_command(dlq)
cli.add_command(sagas)
cli.add_command(projections)
for command in console_commands:
    cli.add_command(command)


def main() -> None:
    """Entry point of the ``tidings`` console script."""
    cli(prog_name="tidings")
