"""Opening what the console reads, and serving it.

The bus and the saga databases are opened only if they exist: a mistyped path gives one
line and creates no file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .._backends import load_transport, read_only_url
from .._errors import ConfigurationError, MissingDependencyError
from ..asyncapi import merge, read_documents
from ..ports import SupportsLookup, Transport
from ._redact import redact_url
from ._view import BusView
from ._web import create_app

__all__ = ["open_view", "serve"]

log = logging.getLogger("tidings.console")


def _sqlite_path(url: str) -> Path | None:
    """The file a ``sqlite://`` bus URL names (None for other schemes)."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        return None
    path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    return Path(path).expanduser()


def _db_path(url: str) -> Path | None:
    """The file a SQLAlchemy ``sqlite+driver:///`` URL names (None for a server)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database).expanduser()


def _must_exist(path: Path | None, what: str) -> None:
    if path is not None and not path.is_file():
        raise ConfigurationError(f"no {what} at {path} (nothing was created)")


@contextlib.asynccontextmanager
async def open_view(broker: str, dbs: Sequence[str] = (), *,
                    allow_actions: bool = False) -> AsyncIterator[BusView]:
    """A :class:`BusView` of the bus at ``broker`` and the saga stores at ``dbs``
    (SQLAlchemy URLs), each of which must exist; closed on exit."""
    _must_exist(_sqlite_path(broker), "bus database")
    for db in dbs:
        _must_exist(_db_path(db), "saga database")
    if not allow_actions:  # only looking: open what SQLite holds read-only
        broker = read_only_url(broker)
        dbs = [_read_only_db(db) for db in dbs]
    transport = load_transport(broker)
    engines: list[Any] = []
    try:
        await transport.start()
        stores = {_name(db, i, dbs): _store(db, engines) for i, db in enumerate(dbs)}
        indexing = asyncio.create_task(_keep_indexed(transport))
        try:
            yield BusView(transport, stores, allow_actions=allow_actions)
        finally:
            indexing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await indexing
    finally:
        for engine in engines:
            await engine.dispose()
        await transport.close()


async def _keep_indexed(transport: Transport, every: float = 5.0) -> None:
    """Index the bus for lookups at start (a big bus takes seconds: better before the
    first question than during it), then what is new every few seconds."""
    if not isinstance(transport, SupportsLookup):
        return
    while True:
        try:
            await transport.prepare_lookups()
        except Exception as exc:  # the next lookup says what is wrong; keep trying
            log.debug("indexing for lookups failed: %s", exc)
        await asyncio.sleep(every)


def _name(url: str, index: int, urls: Sequence[str]) -> str:
    """A short name for a saga database (its file or database name; unique), for the
    page and for ``/api/sagas/{name}/...``: never its URL, which may hold a password."""
    from sqlalchemy.engine import make_url

    names = [Path(make_url(u).database or f"db{i}").name for i, u in enumerate(urls)]
    name = names[index]
    return name if names.count(name) == 1 else f"{name}-{index + 1}"


def _read_only_db(url: str) -> str:
    try:
        from ..sqlalchemy._sqlite import read_only_db_url
    except ImportError as exc:
        raise MissingDependencyError("saga databases (--db)", "sqlalchemy") from exc
    return read_only_db_url(url)


def _store(url: str, engines: list[Any]) -> Any:
    try:
        from sqlalchemy.ext.asyncio import create_async_engine

        from ..sqlalchemy import SqlSagaStore
    except ImportError as exc:
        raise MissingDependencyError("saga databases (--db)", "sqlalchemy") from exc
    engine = create_async_engine(url)
    engines.append(engine)
    return SqlSagaStore(engine)


async def serve(broker: str, dbs: Sequence[str] = (), *, port: int = 8088,
                allow_actions: bool = False, host: str = "127.0.0.1",
                cors_origins: Sequence[str] = (),
                announce: Callable[[str], None] | None = None) -> None:
    """Serve the console on ``host:port`` until cancelled (or SIGINT/SIGTERM); pages
    from ``cors_origins`` may read its API. ``announce`` is called with one line once
    the bus is open."""
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingDependencyError("the console", "console") from exc
    async with open_view(broker, dbs, allow_actions=allow_actions) as view:

        async def documents() -> dict[str, Any]:
            return merge((await read_documents(view.transport)).values())

        app = create_app(view, documents=documents, cors_origins=cors_origins)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                                access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        line = (f"tidings console on http://{host}:{port} for {redact_url(broker)} "
                f"({'actions allowed' if allow_actions else 'read-only'})")
        log.info("%s", line)
        if announce is not None:
            announce(line)
        await server.serve()
        if not server.started:
            raise ConfigurationError(f"the console could not listen on {host}:{port}")
