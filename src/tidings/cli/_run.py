"""``tidings run``: serve an App until SIGTERM/SIGINT, or (``--reload``) restart it
whenever a Python file under the watched folders changes, for development."""

from __future__ import annotations

import importlib
import os
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path

import click

from .._app import App
from .._errors import TidingsError

__all__ = ["run"]


@click.command()
@click.argument("target", metavar="MODULE:APP")
@click.option("--reload", is_flag=True,
              help="Restart the app when a .py file changes (development; needs watchfiles).")
@click.option("--reload-dir", "reload_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Folder to watch with --reload (repeatable; default: the current folder).")
@click.pass_context
def run(ctx: click.Context, target: str, reload: bool, reload_dirs: tuple[str, ...]) -> None:
    """Run the App at MODULE:APP until SIGTERM or SIGINT."""
    os.environ["TIDINGS_BROKER"] = ctx.obj["broker"]
    if reload:
        _split(target)
        _serve_reloading(ctx.obj["broker"], target, reload_dirs or (os.getcwd(),))
        return
    app = _load_app(target)
    try:
        app.run()
    except TidingsError as exc:
        raise click.ClickException(str(exc)) from None


def _serve_reloading(broker: str, target: str, folders: tuple[str, ...]) -> None:
    """Run the app in a child process; on a change, stop it (SIGINT: it finishes its
    in-flight work and commits) and start a fresh one that imports the new code."""
    try:
        from watchfiles import PythonFilter, run_process
    except ImportError:
        raise click.ClickException(
            "--reload needs watchfiles: pip install 'tidings[reload]'") from None
    # The child reads the broker from $TIDINGS_BROKER (set by `run`), not from its
    # command line, which any local user can read in the process list.
    os.environ["TIDINGS_BROKER"] = broker
    command = shlex.join([sys.executable, "-m", "tidings.cli", "run", target])
    click.echo(f"tidings: watching {', '.join(folders)} for changes to restart {target}",
               err=True)
    run_process(*folders, target=command, watch_filter=PythonFilter(),
                callback=lambda changes: click.echo(
                    f"tidings: {_names(changes)} changed, restarting {target}", err=True))


def _names(changes: Iterable[tuple[object, str]]) -> str:
    return ", ".join(sorted(Path(path).name for _, path in changes))


def _split(target: str) -> tuple[str, str]:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise click.BadParameter("expected MODULE:APP, e.g. shop.main:app", param_hint="target")
    return module_name, attr


def _load_app(target: str) -> App:
    module_name, attr = _split(target)
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.ClickException(f"cannot import {module_name!r}: {exc}") from None
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise click.ClickException(f"{target} is not a tidings App (found {type(app).__name__})")
    return app
