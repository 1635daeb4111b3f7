"""``tidings sagas``: list saga instances, show one with its step history, retry a parked one.

Sagas live in the service's database, not on the bus: give its URL with ``--db`` or
``$TIDINGS_DB``: ``sqlite:///orders.db`` or ``postgresql://user@host/db`` (the async
driver, aiosqlite or asyncpg, is picked for you), or any SQLAlchemy async URL.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import click

from .._errors import TidingsError
from ._common import async_url, on_database
from ._output import emit, shorten, table

__all__ = ["async_url", "sagas"]

T = TypeVar("T")


def _store(engine: Any) -> Any:
    # imported in the command's run, where a missing extra becomes one line
    from ..sqlalchemy import SqlSagaStore

    return SqlSagaStore(engine)


def _run(ctx: click.Context, work: Callable[[Any], Awaitable[T]], *,
         read_only: bool = False) -> T:
    """Run ``work(store)`` on a SqlSagaStore for ``--db`` (see :func:`on_database`)."""
    return on_database(ctx, _store, work, read_only=read_only,
                       one_line=(TidingsError, LookupError))


def _when(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at).isoformat(timespec="seconds")


def _summary(record: Any) -> dict[str, Any]:
    return {"id": record.id, "name": record.name, "status": str(record.status),
            "step": record.step, "direction": str(record.direction),
            "attempts": record.attempts, "owner": record.owner, "error": record.error,
            "created_at": _when(record.created_at), "updated_at": _when(record.updated_at)}


@click.group()
@click.option("--db", envvar="TIDINGS_DB", default=None, metavar="URL",
              help="The service's database: sqlite:///x.db, postgresql://...; default $TIDINGS_DB.")
@click.pass_context
def sagas(ctx: click.Context, db: str | None) -> None:
    """Saga instances kept in a service's database."""
    ctx.obj = {**(ctx.obj or {}), "db": db}


@sagas.command("list")
@click.option("--status", "statuses", multiple=True, help="Only sagas in this status (repeatable).")
@click.option("--name", default=None, help="Only sagas of this definition.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.pass_context
def list_sagas(ctx: click.Context, statuses: tuple[str, ...], name: str | None,
               limit: int) -> None:
    """List saga instances, newest first."""
    from ..saga import SagaStatus

    try:
        wanted = [SagaStatus(s.upper()) for s in statuses]
    except ValueError:
        choices = ", ".join(s.value for s in SagaStatus)
        raise click.BadParameter(f"status is one of {choices}", param_hint="--status") from None
    records = _run(ctx, lambda store: store.find(statuses=wanted, name=name, limit=limit),
                   read_only=True)
    data = [_summary(r) for r in records]
    rows = [[d["id"], d["name"], d["status"], d["step"], d["attempts"], d["updated_at"],
             shorten(d["error"] or "")] for d in data]
    emit(ctx.obj.get("json", False), data,
         ["ID", "SAGA", "STATUS", "STEP", "ATTEMPTS", "UPDATED", "ERROR"], rows, "no sagas")


@sagas.command("show")
@click.argument("saga_id")
@click.pass_context
def show(ctx: click.Context, saga_id: str) -> None:
    """Show one saga: its status, state and step history."""
    async def load(store: Any) -> tuple[Any, list[Any]]:
        record = await store.get(saga_id)
        if record is None:
            raise click.ClickException(f"no saga with id {saga_id!r}")
        return record, await store.history(saga_id)

    record, history = _run(ctx, load, read_only=True)
    events = [{"at": _when(e.at), "step": e.step, "phase": e.phase, "outcome": e.outcome,
               "attempt": e.attempt, "error": e.error} for e in history]
    if ctx.obj.get("json", False):
        data = {**_summary(record), "state": json.loads(record.state), "history": events}
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in _summary(record).items():
        click.echo(f"{key + ':':12} {'-' if value is None else value}")
    click.echo(f"{'state:':12} {record.state}")
    click.echo("")
    click.echo(table(["AT", "STEP", "PHASE", "OUTCOME", "ATTEMPT", "ERROR"],
                     [[e["at"], e["step"] or "-", e["phase"], e["outcome"], e["attempt"] or "-",
                       e["error"] or ""] for e in events]))


@sagas.command("retry")
@click.argument("saga_id")
@click.pass_context
def retry(ctx: click.Context, saga_id: str) -> None:
    """Put a parked saga (FAILED_COMPENSATION or PARKED) back to work; a running
    instance of its service picks it up."""
    record = _run(ctx, lambda store: store.request_retry(saga_id, "retry requested by hand"))
    if ctx.obj.get("json", False):
        click.echo(json.dumps(_summary(record)))
    else:
        click.echo(f"saga {record.id} is {record.status} again; its service resumes it")
