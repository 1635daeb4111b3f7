"""Processes of a test: a service started with its output in one text pipe, and killed
and reaped at the end whatever the test did (a clean stop is the test's to check); and
for the brokers the tests start, a free port and a wait until one listens on it. No
pytest here: the benchmarks import it too (through kafka_broker)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["free_port", "service_process", "wait_listening"]


@contextmanager
def service_process(command: list[str], cwd: Path, env: dict[str, str] | None = None
                    ) -> Iterator[tuple[subprocess.Popen[str], IO[str]]]:
    """Start ``command``; yield the process and its merged stdout and stderr."""
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    try:
        yield proc, proc.stdout
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(name: str, port: int, process: subprocess.Popen[bytes],
                   timeout: float) -> None:
    """Return once something accepts connections on ``port``; RuntimeError if
    ``process`` (the server ``name``) exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.01)
    raise RuntimeError(f"{name} did not listen on port {port} within {timeout} s")
