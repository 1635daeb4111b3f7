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
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kafka_broker import free_port
from rabbitmq_broker import Node, _environment, _kill_epmd, rabbitmq_binaries

__all__ = ["Node", "running_cluster"]


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
        _kill_epmd(epmd)
        if not os.environ.get("TIDINGS_KEEP_RABBITMQ"):
            shutil.rmtree(home, ignore_errors=True)


def amqp_url(nodes: Sequence[Node], options: str = "") -> str:
    """The multi-host ``amqp://`` URL of ``nodes`` (guest/guest, vhost ``/``)."""
    hosts = ",".join(node.address for node in nodes)
    return f"amqp://guest:guest@{hosts}/" + (f"?{options}" if options else "")
