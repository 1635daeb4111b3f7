"""``tidings console`` (the live web view) and ``tidings asyncapi`` (an app's document)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

from .._errors import TidingsError

__all__ = ["commands"]


@click.command()
@click.option("--broker", default=None, metavar="URL",
              help="The bus to show (default: the one given to tidings, or $TIDINGS_BROKER).")
@click.option("--db", "dbs", multiple=True, metavar="URL",
              help="A service's database (SQLAlchemy URL) whose sagas to show; repeatable.")
@click.option("--port", type=int, default=8088, show_default=True, help="Port on 127.0.0.1.")
@click.option("--allow-actions", is_flag=True,
              help="Allow re-driving and purging dead letters and retrying sagas.")
@click.pass_context
def console(ctx: click.Context, broker: str | None, dbs: tuple[str, ...], port: int,
            allow_actions: bool) -> None:
    """Serve a live web view of the bus on http://127.0.0.1:PORT (Ctrl-C stops it)."""
    from ..console import serve

    url = broker or ctx.obj["broker"]
    try:
        asyncio.run(serve(url, dbs, port=port, allow_actions=allow_actions,
                          announce=lambda line: click.echo(line, err=True)))
    except TidingsError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:
        raise click.ClickException(f"cannot serve on 127.0.0.1:{port}: {exc}") from None
    except Exception as exc:  # a surprise becomes a line, not a traceback
        raise click.ClickException(f"unexpected {type(exc).__name__}: {exc}") from None


@click.command()
@click.argument("target", metavar="MODULE:APP")
@click.option("--check", "previous", type=click.Path(dir_okay=False, path_type=Path),
              default=None, metavar="PREVIOUS.json",
              help="Compare with an earlier document; exit 1 listing changes that break consumers.")
@click.option("--version", "doc_version", default="1.0.0", show_default=True,
              help="The document's info.version.")
def asyncapi(target: str, previous: Path | None, doc_version: str) -> None:
    """Print the AsyncAPI 3.0 document of the App at MODULE:APP."""
    from ..asyncapi import breaking_changes, document
    from ._run import _load_app

    current = document(_load_app(target), version=doc_version)
    if previous is None:
        click.echo(json.dumps(current, indent=2))
        return
    old = _read_document(previous)
    changes = breaking_changes(old, current)
    if changes:
        click.echo(f"{len(changes)} breaking change(s) since {previous}:")
        for change in changes:
            click.echo(f"  {change}")
        sys.exit(1)
    click.echo(f"compatible with {previous}")


def _read_document(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise click.ClickException(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or "channels" not in data:
        raise click.ClickException(f"{path} is not an AsyncAPI document")
    return data


#: The commands this module adds to ``tidings``.
commands = (console, asyncapi)
