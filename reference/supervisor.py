"""Run the whole shop: every service its own process, logs prefixed, crashes restarted.

    python -m reference.supervisor [--mode orchestration] [--broker URL] [--base-port N]
                                   [--data-dir DIR] [--fresh] [--once]

Ctrl-C, SIGTERM or SIGHUP (the terminal closed) stops every service gracefully; if the
supervisor itself is killed, the kernel stops them (each service asks for a
parent-death signal), so none is left behind on its port. It starts nothing while one
of its ports is taken, and a service counts as up only when the process answering on
its port is the one it started. ``--once`` starts everything, runs the scripted demo
(:mod:`reference.demo`) against it, stops, and exits 0 if it passed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

import httpx

from .common.service import SUPERVISOR_PID
from .common.settings import SERVICES, Mode, Settings, taken_ports

__all__ = ["Child", "Supervisor", "main"]

ROOT = Path(__file__).resolve().parent.parent
COLORS = ("36", "32", "33", "35", "34", "31")


def _print(line: str) -> None:
    """Print ``line``; once stdout is gone (``make demo | tee log`` and the tee was
    interrupted too), keep going without output: stopping the services matters more."""
    try:
        print(line, flush=True)
    except (BrokenPipeError, ValueError, OSError):
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the rest of the process)


class Child:
    """One supervised service process."""

    def __init__(self, name: str, settings: Settings, color: str) -> None:
        self.name = name
        self.settings = settings
        self.prefix = f"\x1b[{color}m{name:<13}|\x1b[0m " if sys.stdout.isatty() \
            else f"{name:<13}| "
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0

    async def start(self) -> asyncio.subprocess.Process:
        """Start the service process, its output piped to our stdout with a prefix."""
        env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1",
               SUPERVISOR_PID: str(os.getpid()),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                            os.environ.get("PYTHONPATH")]))}
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"reference.{self.name}", cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the children
        )
        return self.process

    async def pump(self, stdout: asyncio.StreamReader | None) -> None:
        """Copy the child's output, line by line, until it closes."""
        if stdout is None:
            return
        async for raw in stdout:
            line = raw.decode(errors="replace").rstrip()
            _print(f"{self.prefix}{line}")

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process if it still runs."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)


class Supervisor:
    """Starts every service, restarts any that dies, and stops them all on request."""

    def __init__(self, settings: Settings, services: tuple[str, ...] = SERVICES) -> None:
        self.settings = settings
        self.children = [Child(n, settings, COLORS[i % len(COLORS)])
                         for i, n in enumerate(services)]
        self.stopping = asyncio.Event()

    def say(self, text: str) -> None:
        """A line from the supervisor itself."""
        _print(f"{'supervisor':<13}| {text}")

    async def run(self) -> None:
        """Supervise until :meth:`stop`; then stop the children."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.say(f"mode {self.settings.mode.value}; for the tidings CLI to find this bus:")
        self.say(f"  export TIDINGS_BROKER={shlex.quote(self.settings.broker_url)}")
        watchers = [asyncio.create_task(self._watch(child)) for child in self.children]
        try:
            await self.stopping.wait()
        finally:
            await self._shutdown(watchers)

    def stop(self) -> None:
        """Ask every service to stop (the signal handler calls this)."""
        self.stopping.set()

    async def _watch(self, child: Child) -> None:
        backoff = 0.2
        while not self.stopping.is_set():
            started = time.monotonic()
            process = await child.start()
            await asyncio.gather(child.pump(process.stdout), process.wait())
            if self.stopping.is_set():
                return
            code = process.returncode
            backoff = 0.2 if time.monotonic() - started > 10 else min(backoff * 2, 5.0)
            child.restarts += 1
            self.say(f"{child.name} exited with {code}; restarting in {backoff:.1f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), backoff)

    async def _shutdown(self, watchers: list[asyncio.Task[None]]) -> None:
        self.say("stopping every service")
        for child in self.children:
            child.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*watchers, return_exceptions=True), 15)
        except TimeoutError:
            for child in self.children:
                child.signal(signal.SIGKILL)
            await asyncio.gather(*watchers, return_exceptions=True)
        self.say("all services stopped")

    async def wait_healthy(self, timeout: float = 60.0) -> None:
        """Wait until every service answers ``GET /health`` from the process we started
        (its pid): another process on the port (a shop left running) does not count."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as client:
            for child in self.children:
                url = f"{self.settings.url(child.name)}/health"
                while True:
                    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                        response = await client.get(url)
                        if response.status_code == 200 and child.process is not None \
                                and response.json()["pid"] == child.process.pid:
                            break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{child.name} is not healthy at {url}")
                    await asyncio.sleep(0.1)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m reference.supervisor",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=[m.value for m in Mode],
                        default=os.environ.get("REFERENCE_MODE", Mode.CHOREOGRAPHY.value))
    parser.add_argument("--broker", default=os.environ.get("TIDINGS_BROKER"),
                        help="bus URL (default: sqlite in the data directory; or kafka://...)")
    parser.add_argument("--base-port", type=int,
                        default=int(os.environ.get("REFERENCE_BASE_PORT", "8000")))
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("REFERENCE_DATA_DIR", ROOT / ".reference")))
    parser.add_argument("--fresh", action="store_true", help="delete the data directory first")
    parser.add_argument("--once", action="store_true",
                        help="run the scripted demo, then stop (exit status: passed or not)")
    return parser.parse_args(argv)


def _ports_taken(settings: Settings, base_port: int) -> str | None:
    """Why the shop cannot start on these ports, or None if they are all free."""
    taken = taken_ports(settings)
    if not taken:
        return None
    names = ", ".join(f"{port} ({name})" for name, port in taken)
    ports, are = ("port", "is") if len(taken) == 1 else ("ports", "are")
    return (f"{ports} {names} on {settings.host} {are} already in use: is another shop (or an "
            f"earlier one left running) still up? Stop it, or move this one with "
            f"--base-port, e.g. --base-port {base_port + 100}")


async def _main(args: argparse.Namespace) -> int:
    settings = Settings.from_env().model_copy(update={
        "base_port": args.base_port, "data_dir": args.data_dir.resolve(),
        "broker": args.broker, "mode": Mode(args.mode)})
    supervisor = Supervisor(settings)
    if (taken := _ports_taken(settings, args.base_port)) is not None:
        supervisor.say(taken)  # and before --fresh deletes anything
        return 2
    if args.fresh and settings.data_dir.exists():
        shutil.rmtree(settings.data_dir)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, supervisor.stop)
    running = asyncio.create_task(supervisor.run())
    code = 0
    try:
        await supervisor.wait_healthy()
        supervisor.say(f"all services up: open {settings.url('frontend')}; "
                       f"the tidings console is at {settings.url('console')}")
        admin = settings.admin_token.get_secret_value()
        supervisor.say("admin token (restocking, fraud rules; set SHOP_ADMIN_TOKEN to "
                       f"choose it): {admin}")
        supervisor.say(f"  curl -H 'Authorization: Bearer {admin}' "
                       f"{settings.url('orders')}/fraud-rules")
        if args.once:
            from .demo import scripted_demo

            try:
                code = 0 if await scripted_demo(settings, supervisor.say) else 1
            except Exception as exc:  # a failed demo still stops the services
                supervisor.say(f"demo FAILED: {exc!r}")
                code = 1
            supervisor.stop()
    except TimeoutError as exc:
        supervisor.say(str(exc))
        supervisor.stop()
        code = 1
    await running
    return code


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m reference.supervisor``."""
    sys.exit(asyncio.run(_main(_parse(argv))))


if __name__ == "__main__":
    main()
