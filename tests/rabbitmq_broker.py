"""A throwaway RabbitMQ node for tests: Debian's ``rabbitmq-server``, started privately.

``running_rabbitmq()`` starts a node of its own (own node name, ports, data, logs, Erlang
cookie and epmd) on free loopback ports, enables the plugins tidings' docs mention, and
yields an ``amqp://`` URL; stopping kills the node and its epmd by PID. The session fixture
``amqp_url`` (``tests/conftest.py``) shares one node across the test session (tests
isolate themselves with unique names). No pytest here: the benchmarks import it too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kafka_broker import free_port

__all__ = ["MAX_MESSAGE_SIZE", "Node", "control_env", "delete_queue", "new_vhost",
           "rabbitmq_binaries", "running_rabbitmq"]

#: AMQP port -> the environment rabbitmqctl needs to reach that running node.
_NODES: dict[int, dict[str, str]] = {}


def control_env(url: str) -> dict[str, str]:
    """The environment for ``rabbitmqctl`` to reach the node of ``url`` (started here)."""
    from urllib.parse import urlsplit

    return _NODES[urlsplit(url).port or 5672]

def new_vhost(url: str, name: str) -> str:
    """A new vhost ``name`` on the node of ``url`` (started here), guest allowed on it;
    its ``amqp://`` URL. Its own vhost isolates a user whose names are fixed (the shop)."""
    from urllib.parse import quote, urlsplit

    ctl = str(rabbitmq_binaries() / "rabbitmqctl")
    env = {**os.environ, **control_env(url)}
    for args in (["add_vhost", name], ["set_permissions", "-p", name, "guest", ".*", ".*", ".*"]):
        subprocess.run([ctl, *args], env=env, check=True, capture_output=True, timeout=60)
    return urlsplit(url)._replace(path=f"/{quote(name, safe='')}").geturl()



async def delete_queue(url: str, name: str) -> None:
    """Delete the queue or stream ``name`` on the node of ``url``, as an operator would
    by hand (the broker cancels its consumers)."""
    import aiormq

    connection = await aiormq.connect(url)
    try:
        await (await connection.channel()).queue_delete(name)
    finally:
        await connection.close()

_BIN = Path("/usr/lib/rabbitmq/bin")
#: The test node refuses messages above this (RabbitMQ's default is 128 MiB).
MAX_MESSAGE_SIZE = 4 * 1024 * 1024


def rabbitmq_binaries() -> Path:
    """Where ``rabbitmq-server`` and ``rabbitmqctl`` are (Debian's package)."""
    if not (_BIN / "rabbitmq-server").exists():
        raise RuntimeError("RabbitMQ is a system dependency: apt-get install rabbitmq-server "
                           "(`make test` installs it)")
    return _BIN


def _environment(base: Path, port: int, dist: int, epmd: int, name: str) -> dict[str, str]:
    config = base / "rabbitmq.conf"
    config.write_text(f"listeners.tcp.1 = 127.0.0.1:{port}\nloopback_users = none\n"
                      "log.console = false\nlog.file.level = warning\n"
                      f"max_message_size = {MAX_MESSAGE_SIZE}\n")
    (base / "enabled_plugins").write_text("[rabbitmq_consistent_hash_exchange].\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
    env.update({
        "HOME": str(base), "RABBITMQ_NODENAME": f"{name}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist), "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"), "RABBITMQ_CONFIG_FILE": str(config),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(base / "node.pid"), "ERL_EPMD_ADDRESS": "127.0.0.1",
        "ERL_EPMD_PORT": str(epmd), "RABBITMQ_USE_LONGNAME": "false",
        # With its data, not in the working directory (the checkout) of the tests.
        "ERL_CRASH_DUMP": str(base / "erl_crash.dump"),
    })
    return env


def _kill_epmd(epmd: int) -> None:
    """SIGKILL the epmd daemons serving port ``epmd`` (started by our nodes; found by
    their environment)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
            if b"epmd" in cmdline and f"ERL_EPMD_PORT={epmd}".encode() in environ:
                os.kill(int(proc.name), signal.SIGKILL)  # gone meanwhile: an OSError


def _log_tail(base: Path, limit: int = 3000) -> str:
    """The end of a node's logs (its stdout and its log directory) and the head of its
    crash dump (the slogan says why the VM stopped), for a start failure."""
    parts = []
    for log in [base / "stdout.log", *sorted((base / "log").glob("*.log"))]:
        with contextlib.suppress(OSError):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-limit:]}")
    with contextlib.suppress(OSError), open(base / "erl_crash.dump", errors="replace") as dump:
        parts.append(f"--- erl_crash.dump\n{dump.read(limit)}")
    return "\n".join(parts)


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

    def wait(self, seconds: int = 90) -> None:
        """Block until the node has booted (its app running); ``CalledProcessError`` if
        it does not within ``seconds``."""
        self.ctl("--timeout", str(seconds), "wait", str(self.base / "node.pid"),
                 timeout=seconds + 30)

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


def _single_node() -> tuple[Node, int]:
    """A node of its own (own Erlang cookie and epmd, on free ports), not started yet;
    its epmd port."""
    port, dist, epmd = free_port(), free_port(), free_port()
    base = Path(tempfile.mkdtemp(prefix="tidings-rabbitmq-"))
    name = f"tidings{port}"
    return Node(f"{name}@localhost", port, _environment(base, port, dist, epmd, name), base), epmd


def _remove(node: Node, epmd: int, keep: bool = False) -> None:
    """Kill ``node`` and its epmd; delete its data unless ``keep``."""
    node.kill()
    _kill_epmd(epmd)
    if not keep:
        shutil.rmtree(node.base, ignore_errors=True)


#: A node that fails to start is tried again on new ports this many times in all: a port
#: taken from the ephemeral range can be taken by another process's connection meanwhile.
_ATTEMPTS = 3


@contextlib.contextmanager
def running_rabbitmq() -> Iterator[str]:
    """Start a private RabbitMQ node on free loopback ports; yield its ``amqp://`` URL
    (guest/guest, vhost ``/``). The node, its epmd and its data go when the block exits.
    A node that does not come up is started again on new ports (at most 3 tries); then
    RuntimeError with each try's logs."""
    rabbitmq_binaries()
    failures = []
    for _ in range(_ATTEMPTS):
        node, epmd = _single_node()
        node.start()
        try:
            node.wait(60)
        except subprocess.CalledProcessError as exc:
            failures.append(f"rabbitmqctl wait exited {exc.returncode}: "
                            f"{exc.stdout.decode(errors='replace')}"
                            f"{exc.stderr.decode(errors='replace')}\n{_log_tail(node.base)}")
            _remove(node, epmd)
        except BaseException:
            _remove(node, epmd)
            raise
        else:
            break
    else:
        raise RuntimeError("RabbitMQ did not start:\n" + "\n\n".join(failures))
    _NODES[node.port] = node.env
    try:
        yield f"amqp://guest:guest@127.0.0.1:{node.port}/"
    finally:
        _NODES.pop(node.port, None)
        _remove(node, epmd, keep=bool(os.environ.get("TIDINGS_KEEP_RABBITMQ")))
