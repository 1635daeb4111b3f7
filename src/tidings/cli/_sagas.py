"""``tidings sagas``: list saga instances, show one with its step history, retry a parked one.

Sagas live in the service's database, not on the bus: give its URL with ``--db`` or
``$TIDINGS_DB``: ``sqlite:///orders.db`` or ``postgresql://user@host/db`` (the async
driver, aiosqlite or asyncpg, is picked for you), or any SQLAlchemy async URL.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from .._errors import TidingsError
from ._output import emit, shorten, table

__all__ = ["async_url", "sagas"]

T = TypeVar("T")


def _run(ctx: click.Context, work: Callable[[Any], Awaitable[T]], *,
         read_only: bool = False) -> T:
    """Run ``work(store)`` on a SqlSagaStore for ``--db`` (a SQLite file opened read-only
    when ``read_only``); errors become one line."""
    async def go() -> T:
        from sqlalchemy.ext.asyncio import create_async_engine

        from ..sqlalchemy import SqlSagaStore

        url = async_url(ctx.obj["db"])
        engine = create_async_engine(_read_only(url) if read_only else url)
        try:
            return await work(SqlSagaStore(engine))
        finally:
            await engine.dispose()

    if not ctx.obj.get("db"):
        raise click.UsageError("give the service's database: --db URL or $TIDINGS_DB")
    try:
        return asyncio.run(go())
    except (TidingsError, LookupError) as exc:
        raise click.ClickException(str(exc)) from None
    except click.ClickException:
        raise
    except Exception as exc:  # a driver error, a missing table: one line, not a traceback
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


def _read_only(url: str) -> str:
    """A SQLite ``url`` as SQLite's read-only URI (``mode=ro``: nothing created or
    written); a missing file is an error. Other databases are unchanged."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return url
    path = Path(str(parsed.database)).expanduser().absolute()
    if not path.is_file():
        raise click.ClickException(f"no database at {path} (inspecting creates none)")
    return parsed.set(database=f"file:{path}", query={"mode": "ro", "uri": "true"}
                      ).render_as_string(hide_password=False)


#: Plain URL schemes and the async driver SQLAlchemy needs for each.
_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg",
                  "postgres": "postgresql+asyncpg"}


def async_url(url: str) -> str:
    """``url`` with the async driver named: ``sqlite://`` becomes ``sqlite+aiosqlite://``,
    ``postgresql://`` (or ``postgres://``) ``postgresql+asyncpg://``; others unchanged."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _ASYNC_DRIVERS:
        return url
    return f"{_ASYNC_DRIVERS[scheme]}://{rest}"


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
