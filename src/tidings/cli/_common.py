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
from .._errors import TidingsError

__all__ = ["connected", "run_async"]

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


