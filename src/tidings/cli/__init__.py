"""The ``tidings`` command: run services and look inside the bus.

Every command takes ``--broker URL`` (default ``$TIDINGS_BROKER``, else the embedded
``sqlite:///.tidings/bus.db``) and prints tables, or JSON with ``--json``. Errors are one
line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

from .._app import DEFAULT_BROKER
from .._records import TopicPartition
from ._admin import group_rows, topic_rows
from ._common import connected, run_async
from ._console import commands as console_commands
from ._dlq import dlq
from ._outbox import outbox
from ._output import emit
from ._projections import projections
from ._run import run
from ._sagas import sagas
from ._tail import tail

__all__ = ["main"]

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--broker", envvar="TIDINGS_BROKER", default=DEFAULT_BROKER, show_default=True,
              help="Broker URL: sqlite:///path, kafka://host:port, amqp://host:port, "
                   "mqtt://host:port, memory:// (also $TIDINGS_BROKER).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.version_option(package_name="tidings")
@click.pass_context
def cli(ctx: click.Context, broker: str, as_json: bool) -> None:
    """tidings: a durable message bus for event-driven Python services."""
    ctx.obj = {"broker": broker, "json": as_json}


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
    elif published.offset is None and delay:
        click.echo(f"scheduled {published.id} for {topic} in {delay:g} s")
    elif published.offset is None:  # a backend that does not tell offsets (amqp://)
        click.echo(f"published {published.id} to {topic}[{published.partition}]")
    else:
        click.echo(f"published {published.id} to {topic}[{published.partition}]@{published.offset}")


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"expected NAME=VALUE, got {text!r}", param_hint="--header")
    return name, value


@cli.command()
@click.pass_context
@run_async
async def topics(ctx: click.Context) -> None:
    """List topics with their partitions and end offsets."""
    async with connected(ctx, read_only=True) as app:
        data, rows = topic_rows(await app.transport.describe_topics())
    emit(ctx.obj["json"], data, ["TOPIC", "PARTITIONS", "MESSAGES", "END OFFSETS"], rows,
         "no topics")


@cli.command()
@click.pass_context
@run_async
async def groups(ctx: click.Context) -> None:
    """List consumer groups: members, their partitions, and lag per topic."""
    async with connected(ctx, read_only=True) as app:
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
        return _within_ends(info, int(to))
    try:
        when = datetime.fromisoformat(to)
    except ValueError:
        raise click.BadParameter(f"{to!r} is not earliest, latest, an offset or an ISO time",
                                 param_hint="--to") from None
    result: dict[int, int] = await transport.offsets_for_time(info.name, when.timestamp())
    return result


def _within_ends(info: Any, offset: int) -> dict[int, int]:
    """``offset`` for every partition; refused where it is past a partition's end, since
    the group would then skip the messages appended until the log reaches it."""
    past = {p: info.end_offsets.get(p, 0) for p in range(info.partitions)
            if offset > info.end_offsets.get(p, 0)}
    if past:
        ends = ", ".join(f"[{p}] ends at {end}" for p, end in past.items())
        raise click.ClickException(
            f"offset {offset} is past the end of {info.name} ({ends}): the group would "
            "silently skip the next messages; use an offset up to the end, or --to latest")
    return dict.fromkeys(range(info.partitions), offset)


cli.add_command(run)
cli.add_command(tail)
cli.add_command(dlq)
cli.add_command(sagas)
cli.add_command(outbox)
cli.add_command(projections)
for command in console_commands:
    cli.add_command(command)


def main() -> None:
    """Entry point of the ``tidings`` console script."""
    cli(prog_name="tidings")
