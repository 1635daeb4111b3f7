"""``tidings run --reload`` restarts the service with the new code when a file changes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from queue import Empty, Queue

from processes import service_process

SERVICE = '''
from tidings import App

app = App("pinger")


@app.subscriber("pings")
async def on_ping(payload: dict) -> None:
    print("{version} got", payload["n"], flush=True)
'''


def _lines(stream: object, into: Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line)


def _wait_for(lines: Queue[str], text: str, timeout: float = 30.0) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except Empty:
            continue
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"never saw {text!r} in:\n{''.join(seen)}")


def _publish(broker: str, n: int) -> None:
    out = subprocess.run([sys.executable, "-m", "tidings.cli", "--broker", broker, "publish",
                          "pings", f'{{"n": {n}}}'], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_reload_restarts_the_app_with_the_changed_code(tmp_path: Path) -> None:
    broker = f"sqlite:///{tmp_path}/bus.db"
    code = tmp_path / "service"
    code.mkdir()
    module = code / "pinger.py"
    module.write_text(SERVICE.format(version="v1"))
    command = [sys.executable, "-m", "tidings.cli", "--broker", broker, "run", "--reload",
               "--reload-dir", str(code), "pinger:app"]
    with service_process(command, code) as (proc, output):
        lines: Queue[str] = Queue()
        threading.Thread(target=_lines, args=(output, lines), daemon=True).start()
        _wait_for(lines, "running on")
        _publish(broker, 1)
        _wait_for(lines, "v1 got 1")
        module.write_text(SERVICE.format(version="v2"))
        _wait_for(lines, "pinger.py changed, restarting pinger:app")
        _wait_for(lines, "running on")
        _publish(broker, 2)
        seen = _wait_for(lines, "got 2")
        assert "v2 got 2" in seen[-1], seen
        proc.terminate()
        assert proc.wait(30) == 0
