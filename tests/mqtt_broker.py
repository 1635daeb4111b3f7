"""A throwaway MQTT 5 broker for tests: Debian's mosquitto (``make system-deps``).

``running_mosquitto()`` writes a config file of its own (a loopback listener on a free
port, persistence in a private directory), starts ``mosquitto -c FILE`` in the
foreground, yields an ``mqtt://`` URL and stops the broker by its PID. No pytest here:
the benchmark imports this module.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["free_port", "mosquitto_binary", "running_mosquitto"]


def mosquitto_binary() -> str:
    """Where ``mosquitto`` is (Debian puts it in /usr/sbin)."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if found is None:
        raise RuntimeError("the MQTT tests need mosquitto: make system-deps "
                           "(apt-get install mosquitto)")
    return found


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.01)
    raise RuntimeError(f"mosquitto did not listen on port {port} within {timeout} s")


@contextlib.contextmanager
def running_mosquitto(*, users: dict[str, str] | None = None, extra: str = "",
                      port: int | None = None, data: Path | None = None) -> Iterator[str]:
    """Start mosquitto on a free loopback port (or ``port``); yield its ``mqtt://`` URL
    (with the first of ``users``' credentials when given: the broker then refuses
    anonymous clients). ``extra`` is appended to the config file; ``data`` is where it
    keeps its state (a private directory by default), so a restart can find it."""
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="tidings-mosquitto-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # mosquitto may have dropped to its own user when it reads it
        data = data or root / "data"
        data.mkdir(mode=0o777, exist_ok=True)
        data.chmod(0o777)
        lines = [f"listener {port} 127.0.0.1", "persistence true",
                 f"persistence_location {data}/", "max_queued_messages 0",
                 "log_dest stderr", "log_type error", "log_type warning"]
        url = f"mqtt://127.0.0.1:{port}"
        if users:
            passwords = root / "passwords"
            passwords.write_text("".join(f"{u}:{p}\n" for u, p in users.items()))
            subprocess.run(["mosquitto_passwd", "-U", str(passwords)], check=True,
                           capture_output=True)
            passwords.chmod(0o644)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
            user, password = next(iter(users.items()))
            url = f"mqtt://{user}:{password}@127.0.0.1:{port}"
        else:
            lines.append("allow_anonymous true")
        (root / "mosquitto.conf").write_text("\n".join([*lines, extra, ""]))
        with (root / "mosquitto.log").open("wb") as log:
            process = subprocess.Popen(
                [mosquitto_binary(), "-c", str(root / "mosquitto.conf")],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )
        try:
            try:
                _wait_listening(port, process, 10.0)
            except RuntimeError as exc:
                said = (root / "mosquitto.log").read_text()[-2000:]
                raise RuntimeError(f"{exc}: {said}") from None
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
