"""``tidings projections``: rebuild a projection from the first stored event, or show
where each projection is.

The projections come from ``--registry MODULE:OBJECT`` (or ``$TIDINGS_PROJECTIONS``):
a :class:`tidings.eventsourcing.sqlalchemy.Projections`, or a function returning one.
Its event store names the database.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from .._errors import TidingsError
from ._output import emit

__all__ = ["projections"]

T = TypeVar("T")


def _load(target: str | None) -> Any:
    from ..eventsourcing.sqlalchemy import Projections

    if not target:
        raise click.UsageError("name the projections: --registry MODULE:OBJECT or "
                               "$TIDINGS_PROJECTIONS")
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise click.BadParameter("expected MODULE:OBJECT, e.g. shop.read:projections",
                                 param_hint="--registry")
    sys.path.insert(0, os.getcwd())
    try:
        found: Any = getattr(importlib.import_module(module_name), attr, None)
    except ImportError as exc:
        raise click.ClickException(f"cannot import {module_name!r}: {exc}") from None
    if callable(found) and not isinstance(found, Projections):
        found = found()
    if not isinstance(found, Projections):
        raise click.ClickException(
            f"{target} is not a tidings Projections (found {type(found).__name__})")
    return found


def _run(registry: Any, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(registry)``, dispose of its engine; errors become one line."""
    async def go() -> T:
        try:
            return await work(registry)
        finally:
            await registry.store.engine.dispose()

    try:
        return asyncio.run(go())
    except TidingsError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        sys.exit(130)
    except click.ClickException:
        raise
    except Exception as exc:  # a driver error, a missing table: one line, not a traceback
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from None


class _Bar:
    """A click progress bar on stderr, sized on the first report."""

    def __init__(self, label: str, show: bool) -> None:
        self.label, self.show = label, show
        self.bar: Any = None
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        if not self.show:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=max(total, 1), label=self.label,
                                         file=sys.stderr, show_pos=True, show_eta=True)
            self.bar.__enter__()
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@click.group()
@click.option("--registry", envvar="TIDINGS_PROJECTIONS", default=None,
              metavar="MODULE:OBJECT", help="The Projections (default $TIDINGS_PROJECTIONS).")
@click.pass_context
def projections(ctx: click.Context, registry: str | None) -> None:
    """Projections: read models built from an event store."""
    ctx.obj = {**(ctx.obj or {}), "registry": registry}


@projections.command()
@click.argument("name")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def rebuild(ctx: click.Context, name: str, quiet: bool) -> None:
    """Clear projection NAME and rebuild it from the first stored event."""
    registry = _load(ctx.obj.get("registry"))
    as_json = bool(ctx.obj.get("json"))
    bar = _Bar(f"rebuilding {name}", show=not quiet and not as_json)
    started = time.perf_counter()
    try:
        count = _run(registry, lambda r: r.rebuild(name, progress=bar))
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    rate = count / seconds if seconds > 0 else 0.0
    if as_json:
        click.echo(json.dumps({"projection": name, "events": count,
                               "seconds": round(seconds, 3), "events_per_s": round(rate)}))
    else:
        click.echo(f"rebuilt {name}: {count} events in {seconds:.1f} s ({rate:,.0f} events/s)")


@projections.command("status")
@click.pass_context
def status(ctx: click.Context) -> None:
    """Show each projection's position, the store's head and the lag."""
    registry = _load(ctx.obj.get("registry"))
    rows = _run(registry, lambda r: r.status())
    data = [{"name": s.name, "position": s.position, "head": s.head, "lag": s.lag,
             "error": s.error} for s in rows]
    emit(bool(ctx.obj.get("json")), data, ["PROJECTION", "POSITION", "HEAD", "LAG", "ERROR"],
         [[s.name, s.position, s.head, s.lag, s.error] for s in rows], "no projections")
