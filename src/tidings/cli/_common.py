"""What every async CLI command shares: one-line errors and a connected App."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import ParamSpec, TypeVar

import click

from .._app import App
from .._backends import read_only_url
from .._errors import TidingsError

__all__ = ["connected", "read_only_url", "run_async"]

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
async def connected(ctx: click.Context, *, read_only: bool = False) -> AsyncIterator[App]:
    """An App connected to the broker the command names, with no subscribers;
    ``read_only`` for commands that only look (see :func:`read_only_url`)."""
    broker = ctx.obj["broker"]
    app = App("tidings-cli", broker=read_only_url(broker) if read_only else broker,
              shutdown_timeout=5)
    async with app:
        yield app


