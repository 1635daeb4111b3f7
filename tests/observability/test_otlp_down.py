"""An OTLP endpoint that does not answer: spans are dropped with one warning, handlers
and publishing are unaffected."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_an_endpoint_that_does_not_answer_costs_one_warning() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
           "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}
    done = subprocess.run([sys.executable, str(HERE / "otlp_down.py")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("handled 200 in "), done.stdout
    warnings = [line for line in done.stderr.splitlines() if "cannot be exported" in line]
    assert len(warnings) == 1, done.stderr
    assert f"127.0.0.1:{port}" in warnings[0]
    others = [line for line in done.stderr.splitlines()
              if line.strip() and "cannot be exported" not in line]
    assert others == [], others
