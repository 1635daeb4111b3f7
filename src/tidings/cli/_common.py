"""What every async CLI command shares: one-line errors and a connected App."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import click

from .._app import App
from .._backends import read_only_url
from .._errors import TidingsError

__all__ = ["async_url", "connected", "on_database", "read_only_url", "run_async"]

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")


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
async def connected(ctx: click.Context, *, read_only: bool = False) -> AsyncIterator[App]:
    """An App connected to the broker the command names, with no subscribers;
    ``read_only`` for commands that only look (see :func:`read_only_url`)."""
    broker = ctx.obj["broker"]
    app = App("tidings-cli", broker=read_only_url(broker) if read_only else broker,
              shutdown_timeout=5)
    async with app:
        yield app


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


def on_database(ctx: click.Context, build: Callable[[Any], S],
                work: Callable[[S], Awaitable[R]], *, read_only: bool = False,
                one_line: tuple[type[BaseException], ...] = (TidingsError,)) -> R:
    """Run ``work(build(engine))`` on the service's database (``--db``; a SQLite file
    opened read-only when ``read_only``). An error of ``one_line`` is its message; any
    other (a driver error, a missing table) its type and message: one line, never a
    traceback."""
    async def go() -> R:
        from sqlalchemy.ext.asyncio import create_async_engine

        from ..sqlalchemy._sqlite import read_only_db_url

        url = async_url(ctx.obj["db"])
        engine = create_async_engine(read_only_db_url(url) if read_only else url)
        try:
            return await work(build(engine))
        finally:
            await engine.dispose()

    if not ctx.obj.get("db"):
        raise click.UsageError("give the service's database: --db URL or $TIDINGS_DB")
    try:
        return asyncio.run(go())
    except one_line as exc:
        raise click.ClickException(str(exc)) from None
    except click.ClickException:
        raise
    except Exception as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
