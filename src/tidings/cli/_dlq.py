"""``tidings dlq``: list, show, re-drive and purge dead letters."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import click

from .._app import App
from .._dlq import DeadLetter
from .._errors import TidingsError
from .._parklog import ParkedKey, parked_keys
from .._records import Record
from ._common import read_only_url
from ._output import emit, shorten

__all__ = ["dlq"]


def _run(ctx: click.Context, work: Any, *, read_only: bool = False) -> Any:
    async def go() -> Any:
        broker = ctx.obj["broker"]
        app = App("tidings-cli", broker=read_only_url(broker) if read_only else broker,
                  shutdown_timeout=5)
        async with app:
            return await work(app)

    try:
        return asyncio.run(go())
    except (TidingsError, LookupError) as exc:
        message = exc.args[0] if isinstance(exc, LookupError) and exc.args else str(exc)
        raise click.ClickException(str(message)) from None
    except Exception as exc:
        raise click.ClickException(f"unexpected {type(exc).__name__}: {exc}") from None


def _position(text: str) -> tuple[int, int]:
    partition, sep, offset = text.partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise click.BadParameter(f"expected PARTITION:OFFSET, got {text!r}")
    return int(partition), int(offset)


def _summary(entry: DeadLetter) -> dict[str, Any]:
    return {
        "position": f"{entry.partition}:{entry.offset}",
        "original": f"{entry.original_topic}[{entry.original_partition}]@{entry.original_offset}",
        "group": entry.group,
        "error_type": entry.error_type,
        "error_message": entry.error_message,
        "attempts": entry.attempts,
        "failed_at": datetime.fromtimestamp(entry.failed_at).isoformat(timespec="seconds"),
    }


@click.group()
def dlq() -> None:
    """Dead letters: messages that failed for good, kept on TOPIC.dlq."""


@dlq.command("list")
@click.argument("topic", required=False)
@click.pass_context
def list_(ctx: click.Context, topic: str | None) -> None:
    """List pending dead letters of TOPIC; without TOPIC, every dead-letter topic with
    its pending count."""
    if topic is None:
        _list_topics(ctx)
        return
    async def both(app: App) -> tuple[list[DeadLetter], list[tuple[Record, str]]]:
        queue = app.dead_letters(topic)
        return await queue.pending(), await queue.malformed()

    entries, malformed = _run(ctx, both, read_only=True)
    data = [_summary(e) for e in entries]
    rows = [[d["position"], d["original"], d["group"], d["error_type"].rsplit(".", 1)[-1],
             shorten(d["error_message"]), d["attempts"], d["failed_at"]] for d in data]
    emit(ctx.obj["json"], data,
         ["POSITION", "ORIGINAL", "GROUP", "ERROR", "MESSAGE", "ATTEMPTS", "FAILED AT"],
         rows, f"no pending dead letters for {topic}")
    _report_malformed(topic, malformed)


def _report_malformed(topic: str, malformed: list[tuple[Record, str]]) -> None:
    """One line on stderr per entry that was skipped, so scripts reading stdout still work."""
    for record, reason in malformed:
        click.echo(f"skipped malformed dead letter {record.topic}[{record.partition}]@"
                   f"{record.offset}: {reason} (drop it with: tidings dlq purge {topic} "
                   f"--entry {record.partition}:{record.offset})", err=True)


def _list_topics(ctx: click.Context) -> None:
    async def counts(app: App) -> list[dict[str, Any]]:
        names = sorted(t.name for t in await app.transport.describe_topics()
                       if t.name.endswith(".dlq"))
        found = []
        for name in names:
            pending = await app.dead_letters(name).pending_records()
            if pending:
                found.append({"topic": name.removesuffix(".dlq"), "dlq": name,
                              "pending": len(pending)})
        return found

    data = _run(ctx, counts, read_only=True)
    emit(ctx.obj["json"], data, ["TOPIC", "DEAD-LETTER TOPIC", "PENDING"],
         [[d["topic"], d["dlq"], d["pending"]] for d in data], "no dead letters")


@dlq.command()
@click.argument("topic")
@click.argument("position", metavar="PARTITION:OFFSET")
@click.pass_context
def show(ctx: click.Context, topic: str, position: str) -> None:
    """Show one dead letter in full: headers, value and error."""
    partition, offset = _position(position)
    entry: DeadLetter = _run(ctx, lambda app: app.dead_letters(topic).get(partition, offset),
                             read_only=True)
    data = _summary(entry) | {
        "key": entry.record.key,
        "headers": dict(entry.record.headers),
        "value": entry.record.value.decode("utf-8", "replace"),
    }
    if ctx.obj["json"]:
        click.echo(json.dumps(data, indent=2))
        return
    for name, value in data.items():
        if name == "headers":
            for header, text in value.items():
                click.echo(f"  {header}: {text}")
        else:
            click.echo(f"{name}: {value}")


@dlq.command()
@click.argument("topic")
@click.option("--entry", "entries", multiple=True, metavar="PARTITION:OFFSET",
              help="Re-drive only these (default: every pending one).")
@click.pass_context
def redrive(ctx: click.Context, topic: str, entries: tuple[str, ...]) -> None:
    """Send dead letters of TOPIC back to their topic, for the group that failed them."""
    wanted = {_position(e) for e in entries}

    async def work(app: App) -> tuple[int, list[tuple[Record, str]]]:
        queue = app.dead_letters(topic)
        if not wanted:
            return await queue.redrive(), await queue.malformed()
        chosen = [await queue.get(p, o) for p, o in sorted(wanted)]
        return await queue.redrive(chosen), []

    count, malformed = _run(ctx, work)
    _report_malformed(topic, malformed)
    click.echo(json.dumps({"redriven": count}) if ctx.obj["json"] else f"re-drove {count}")


@dlq.command()
@click.argument("topic")
@click.option("--entry", "entries", multiple=True, metavar="PARTITION:OFFSET",
              help="Purge only these (default: every pending one, malformed ones too).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def purge(ctx: click.Context, topic: str, entries: tuple[str, ...], yes: bool) -> None:
    """Drop pending dead letters of TOPIC (they stay in the log, marked resolved)."""
    wanted = sorted({_position(e) for e in entries}) or None
    if not yes:
        which = "every pending dead letter" if wanted is None else f"{len(wanted)} dead letters"
        click.confirm(f"purge {which} of {topic}?", abort=True)
    count = _run(ctx, lambda app: app.dead_letters(topic).purge(wanted))
    click.echo(json.dumps({"purged": count}) if ctx.obj["json"] else f"purged {count}")


@dlq.command()
@click.argument("group", required=False)
@click.pass_context
def parked(ctx: click.Context, group: str | None) -> None:
    """List the parked keys of GROUP (default: of every group): keys whose messages wait
    behind a non-blocking retry or a dead letter (``dead_letter="park-key"``), with
    how many wait and what their head waits for."""
    keys: list[ParkedKey] = _run(ctx, lambda app: parked_keys(app.transport, group),
                                 read_only=True)
    data = [{"group": k.group, "topic": k.topic, "partition": k.partition, "key": k.key,
             "parked": k.count, "head": k.head, "waits_for": k.waits_for} for k in keys]
    emit(ctx.obj["json"], data, ["GROUP", "TOPIC", "PARTITION", "KEY", "PARKED", "WAITS FOR"],
         [[d["group"], d["topic"], d["partition"], d["key"], d["parked"], d["waits_for"]]
          for d in data], "no parked keys")

