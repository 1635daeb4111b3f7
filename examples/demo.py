"""The article's registration flow on the embedded bus, across processes:
``python examples/demo.py`` (``make demo`` runs the whole shop instead).

Starts the notifications listener as its own process (``tidings run``), registers users
1, 2 and 3 from this process, shows the listener's log lines and the bus's state, then
stops the listener gracefully. The bus is ``$TIDINGS_BROKER``, else a fresh
``.tidings/demo.db``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples.registration import register  # noqa: E402
from tidings import App  # noqa: E402

DEMO_BUS = f"sqlite:///{ROOT}/.tidings/demo.db"
BROKER = os.environ.get("TIDINGS_BROKER") or DEMO_BUS
TIDINGS = [sys.executable, "-m", "tidings.cli"]
USERS = ["Alice Smith", "Bob Li", "Carol Wang"]


def banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


async def publish_users() -> None:
    users = App("users", broker=BROKER)
    async with users:
        for user_id, name in enumerate(USERS, start=1):
            await register(users, user_id, name)
            print(f"users: New user created with ID {user_id}", flush=True)


def main() -> None:
    if BROKER == DEMO_BUS:
        for stale in (ROOT / ".tidings").glob("demo.db*"):
            stale.unlink()  # each demo starts from an empty bus
    env = {**os.environ, "TIDINGS_BROKER": BROKER, "PYTHONPATH": str(ROOT)}
    banner(f"starting the notifications service on {BROKER}")
    listener = subprocess.Popen(
        [*TIDINGS, "run", "examples.registration:notifications"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert listener.stdout is not None
    time.sleep(1.5)
    banner("registering users")
    asyncio.run(publish_users())
    seen = 0
    deadline = time.monotonic() + 20
    while seen < len(USERS) and time.monotonic() < deadline:
        line = listener.stdout.readline()
        if "Received registration event" in line:
            seen += 1
            print(f"notifications: {line.strip()}", flush=True)
    banner("topics and groups")
    subprocess.run([*TIDINGS, "topics"], env=env, check=True)
    subprocess.run([*TIDINGS, "groups"], env=env, check=True)
    banner("stopping the listener (SIGTERM: finish in-flight work, commit, leave)")
    listener.send_signal(signal.SIGTERM)
    listener.wait(30)
    print(f"listener exited with {listener.returncode}; {seen}/{len(USERS)} events received")
    sys.exit(0 if seen == len(USERS) and listener.returncode == 0 else 1)


if __name__ == "__main__":
    main()
