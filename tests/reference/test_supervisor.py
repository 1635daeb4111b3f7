"""The supervisor leaves no service behind, however it ends, and starts none on a port
another process holds."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from reference.common.settings import SERVICES, Settings, free_base_port, taken_ports
from reference.supervisor import Supervisor
from shop import ROOT, Shop, running_shop


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_gone(shop: Shop, pids: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids) or taken_ports(shop.settings):
        left = [pid for pid in pids if _alive(pid)]
        assert time.monotonic() < deadline, (
            f"services still running: {left}; ports taken: {taken_ports(shop.settings)}")
        time.sleep(0.1)


def test_services_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    with running_shop(tmp_path) as shop:
        pids = [shop.pid(service) for service in SERVICES]
        shop.process.kill()  # SIGKILL: the supervisor stops nothing itself
        shop.process.wait()
        _wait_gone(shop, pids)


def test_a_closed_terminal_stops_every_service(tmp_path: Path) -> None:
    with running_shop(tmp_path) as shop:
        pids = [shop.pid(service) for service in SERVICES]
        shop.process.send_signal(signal.SIGHUP)
        assert shop.process.wait(30) == 0
        _wait_gone(shop, pids)
        assert "all services stopped" in shop.lines("supervisor")


def test_a_taken_port_is_named_before_anything_starts(tmp_path: Path) -> None:
    base = free_base_port()
    data = tmp_path / "data"
    data.mkdir()
    (data / "keep").write_text("--fresh must not delete this while another shop runs")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", base + 3))  # inventory's port
        holder.listen()
        result = subprocess.run(
            [sys.executable, "-m", "reference.supervisor", "--base-port", str(base),
             "--data-dir", str(data), "--fresh"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
            text=True, timeout=30)
    assert result.returncode != 0
    assert f"port {base + 3} (inventory)" in result.stdout, result.stdout
    assert "--base-port" in result.stdout
    assert "all services up" not in result.stdout
    assert (data / "keep").exists()


def test_a_port_in_time_wait_is_free(tmp_path: Path) -> None:
    """A shop stopped a moment ago leaves connections in TIME_WAIT: the next one starts."""
    base = free_base_port()
    port = base + 2
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end goes to TIME_WAIT
        client.close()
    with running_shop(tmp_path, base_port=base) as shop:
        assert shop.pid("orders") > 0


def test_ctrl_c_with_the_output_pipe_gone_stops_every_service(tmp_path: Path) -> None:
    """``make demo | tee log`` and Ctrl-C: the tee dies with the supervisor's stdout."""
    base = free_base_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "reference.supervisor", "--base-port", str(base),
         "--data-dir", str(tmp_path / "data")],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        pids = []
        for raw in process.stdout:
            assert time.monotonic() < deadline, "the shop did not come up"
            line = raw.decode()
            if "all services up" in line:
                break
        shop = Shop(Settings(base_port=base, data_dir=tmp_path / "data"), process,
                    tmp_path / "unused.log")
        pids = [shop.pid(service) for service in SERVICES]
        shop.http.close()
        process.stdout.close()  # the tee is gone
        process.send_signal(signal.SIGINT)
        process.wait(30)
        _wait_gone(shop, pids)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


class _Orphan(http.server.BaseHTTPRequestHandler):
    """A service left running by an earlier shop: healthy, but not our child."""

    def do_GET(self) -> None:
        body = json.dumps({"service": "users", "pid": 1, "status": "ok"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_health_check_answered_by_another_process_does_not_count(tmp_path: Path) -> None:
    settings = Settings(base_port=free_base_port(), data_dir=tmp_path)
    supervisor = Supervisor(settings, services=("users",))
    orphan = http.server.HTTPServer(("127.0.0.1", settings.port("users")), _Orphan)
    thread = threading.Thread(target=orphan.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(TimeoutError, match="users is not healthy"):
            asyncio.run(supervisor.wait_healthy(timeout=1.5))
    finally:
        orphan.shutdown()
        orphan.server_close()
