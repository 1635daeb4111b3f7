"""``tidings outbox``: the outbox rows the relay could never send, and what to do with them.

Like ``tidings sagas``, it reads the service's database: ``--db URL`` or ``$TIDINGS_DB``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import click

from ._common import on_database
from ._output import emit, shorten

__all__ = ["outbox"]

T = TypeVar("T")


def _dead_letters(engine: Any) -> Any:
    # imported in the command's run, where a missing extra becomes one line
    from ..sqlalchemy import OutboxDeadLetters

    return OutboxDeadLetters(engine)


def _run(ctx: click.Context, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(dead_letters)`` on the outbox of ``--db`` (see :func:`on_database`)."""
    return on_database(ctx, _dead_letters, work)


@click.group()
@click.option("--db", envvar="TIDINGS_DB", default=None, metavar="URL",
              help="The service's database: sqlite:///x.db, postgresql://...; default $TIDINGS_DB.")
@click.pass_context
def outbox(ctx: click.Context, db: str | None) -> None:
    """The transactional outbox kept in a service's database."""
    ctx.obj = {**(ctx.obj or {}), "db": db}


@outbox.command("dead")
@click.option("--limit", type=int, default=100, show_default=True)
@click.pass_context
def dead(ctx: click.Context, limit: int) -> None:
    """List the rows the relay moved aside: refused by the bus for good, or waiting
    behind such a row of the same topic and key (BLOCKED BY)."""
    rows = _run(ctx, lambda letters: letters.list(limit))
    data = [dataclasses.asdict(r) for r in rows]
    table = [[r.seq, r.topic, r.key, r.size, r.blocked_by,
              datetime.fromtimestamp(r.failed_at).isoformat(timespec="seconds"),
              shorten(r.error)] for r in rows]
    emit(ctx.obj.get("json", False), data,
         ["SEQ", "TOPIC", "KEY", "BYTES", "BLOCKED BY", "FAILED", "ERROR"], table,
         "no dead outbox rows")


@outbox.command("requeue")
@click.argument("seqs", nargs=-1, type=int)
@click.pass_context
def requeue(ctx: click.Context, seqs: tuple[int, ...]) -> None:
    """Put dead rows (the SEQS given, or all) back in the outbox, in their order, once
    their cause is fixed (a larger size limit): the relay sends them."""
    count = _run(ctx, lambda letters: letters.requeue(seqs or None))
    click.echo(f"{count} row(s) back in the outbox")


@outbox.command("discard")
@click.argument("seqs", nargs=-1, type=int)
@click.option("--all", "everything", is_flag=True, help="Discard every dead row.")
@click.pass_context
def discard(ctx: click.Context, seqs: tuple[int, ...], everything: bool) -> None:
    """Delete dead rows (the SEQS given, or --all): their events are never sent."""
    if not seqs and not everything:
        raise click.UsageError("name the rows to discard, or --all")
    count = _run(ctx, lambda letters: letters.discard(seqs or None))
    click.echo(f"{count} row(s) discarded")
