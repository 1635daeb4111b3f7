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
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from processes import free_port, wait_listening

__all__ = ["free_port", "mosquitto_binary", "running_mosquitto"]


def mosquitto_binary() -> str:
    """Where ``mosquitto`` is (Debian puts it in /usr/sbin)."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if found is None:
        raise RuntimeError("the MQTT tests need mosquitto: make system-deps "
                           "(apt-get install mosquitto)")
    return found


@contextlib.contextmanager
def running_mosquitto(*, users: dict[str, str] | None = None, extra: str = "",
                      port: int | None = None, data: Path | None = None,
                      started: Callable[[subprocess.Popen[bytes]], None] | None = None,
                      ) -> Iterator[str]:
    """Start mosquitto on a free loopback port (or ``port``); yield its ``mqtt://`` URL
    (with the first of ``users``' credentials when given: the broker then refuses
    anonymous clients). ``extra`` is appended to the config file; ``data`` is where it
    keeps its state (a private directory by default), so a restart can find it;
    ``started`` gets the broker's process once it listens (to SIGKILL it)."""
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
                wait_listening("mosquitto", port, process, 10.0)
            except RuntimeError as exc:
                said = (root / "mosquitto.log").read_text()[-2000:]
                raise RuntimeError(f"{exc}: {said}") from None
            if started is not None:
                started(process)
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
