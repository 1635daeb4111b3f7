"""Private RabbitMQ nodes for failover tests: one node that can be SIGKILLed and started
again on the same ports and data, or a 3-node cluster on loopback.

Every node has its own node name, AMQP and distribution ports, data and logs; the nodes
of one cluster share an Erlang cookie (``HOME``) and a private epmd port. The nodes start
concurrently; nodes 2.. then join node 1 (``stop_app; join_cluster; start_app``). Stopping
kills every node and the shared epmd by PID. No pytest here (like ``rabbitmq_broker``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from kafka_broker import free_port
from rabbitmq_broker import _environment, _epmd_pids, rabbitmq_binaries

__all__ = ["Node", "running_cluster"]


@dataclass
class Node:
    """One private node; ``kill()`` it (SIGKILL) and ``start()`` it again at will."""

    name: str  # the Erlang node name, e.g. tidings-a12345@localhost
    port: int
    env: dict[str, str]
    base: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """``127.0.0.1:port`` (for a multi-host URL)."""
        return f"127.0.0.1:{self.port}"

    def ctl(self, *args: str, timeout: float = 90) -> str:
        """Run ``rabbitmqctl -n <this node> args``; its output."""
        done = subprocess.run([str(rabbitmq_binaries() / "rabbitmqctl"), "-n", self.name,
                               *args], env=self.env, check=True, capture_output=True,
                              timeout=timeout)
        return done.stdout.decode()

    def start(self) -> None:
        """Start the node's process (returns at once; ``wait()`` for it to boot)."""
        with open(self.base / "stdout.log", "ab") as out:
            self.process = subprocess.Popen(
                [str(rabbitmq_binaries() / "rabbitmq-server")], env=self.env, stdout=out,
                stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)

    def wait(self) -> None:
        """Block until the node has booted (its app running)."""
        self.ctl("--timeout", "90", "wait", str(self.base / "node.pid"), timeout=120)

    def kill(self) -> None:
        """SIGKILL the node (its whole process group), as a crash would."""
        process, self.process = self.process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        with contextlib.suppress(FileNotFoundError):
            (self.base / "node.pid").unlink()

    def stop(self) -> None:
        """Stop the node as a service manager would (SIGTERM: it shuts down cleanly)."""
        process, self.process = self.process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        with contextlib.suppress(FileNotFoundError):
            (self.base / "node.pid").unlink()

    @property
    def alive(self) -> bool:
        """Whether the node's process runs."""
        return self.process is not None and self.process.poll() is None


def _node(home: Path, epmd: int, label: str) -> Node:
    port, dist = free_port(), free_port()
    base = home / label
    base.mkdir()
    env = _environment(base, port, dist, epmd, f"tidings-{label}-{port}")
    env["HOME"] = str(home)  # one Erlang cookie for the cluster
    return Node(f"tidings-{label}-{port}@localhost", port, env, base)


@contextlib.contextmanager
def running_cluster(size: int = 3) -> Iterator[Sequence[Node]]:
    """Start ``size`` nodes on free loopback ports and join them into one cluster (one
    node: no join); yield them (guest/guest, vhost ``/``). All go when the block exits."""
    rabbitmq_binaries()
    home = Path(tempfile.mkdtemp(prefix="tidings-rabbitmq-cluster-"))
    cookie = home / ".erlang.cookie"
    cookie.write_text(f"TIDINGS{os.getpid()}{time.monotonic_ns()}")
    cookie.chmod(0o400)
    epmd = free_port()
    nodes = [_node(home, epmd, chr(ord("a") + i)) for i in range(size)]
    try:
        for node in nodes:
            node.start()
        with ThreadPoolExecutor(size) as pool:
            list(pool.map(Node.wait, nodes))
        for node in nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", nodes[0].name)
            node.ctl("start_app")
        yield nodes
    finally:
        for node in nodes:
            node.kill()
        for pid in _epmd_pids(epmd):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not os.environ.get("TIDINGS_KEEP_RABBITMQ"):
            shutil.rmtree(home, ignore_errors=True)


def amqp_url(nodes: Sequence[Node], options: str = "") -> str:
    """The multi-host ``amqp://`` URL of ``nodes`` (guest/guest, vhost ``/``)."""
    hosts = ",".join(node.address for node in nodes)
    return f"amqp://guest:guest@{hosts}/" + (f"?{options}" if options else "")
