"""The backend under test: Apps on its URL, and group members as OS processes."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from functools import cached_property
from pathlib import Path
from typing import Any

from ..._app import App
from ...ports import Capability
from .. import crash
from .._member import build

__all__ = ["Backend", "Member"]


class Backend:
    """One backend under test, with a broker URL isolated for one test.

    Its transport's declarations decide how the suite drives it: members are OS processes
    (killed with SIGKILL to crash) where ``shared_between_processes``, else Apps in this
    process (crashed with :func:`tidings.testing.crash`); tests of a capability it does not
    declare assert the refusal instead.
    """

    def __init__(self, url: str, tmp: Path) -> None:
        self.url = url
        self.tmp = tmp
        self.members: list[Member] = []
        self.suffix = uuid.uuid4().hex[:8]

    @cached_property
    def name(self) -> str:
        """The URL's scheme: ``memory``, ``sqlite``, ``kafka``, ..."""
        return self.url.split(":", 1)[0]

    @cached_property
    def capabilities(self) -> frozenset[Capability]:
        """What the transport declares it honours."""
        return App("probe", broker=self.url).transport.capabilities

    @cached_property
    def multiprocess(self) -> bool:
        """Whether several OS processes can share the broker."""
        return App("probe", broker=self.url).transport.shared_between_processes

    def app(self, name: str, **kwargs: Any) -> App:
        """An App on this backend, its name (and so its group) made unique to the test,
        so tests sharing a broker never share a group: ``app("svc")`` twice in one test
        is one group."""
        return App(f"{name}-{self.suffix}", broker=self.url, **kwargs)

    async def member(self, topic: str, group: str, *, concurrency: int = 1,
                     sleep: float = 0.0) -> Member:
        """Start a group member: an OS process where the backend allows, else in-process."""
        member = Member(self, topic, group, concurrency, sleep)
        await member.start()
        self.members.append(member)
        return member

    @property
    def outfile(self) -> Path:
        """Where members report what they handled (one JSON line per message)."""
        return self.tmp / "handled.jsonl"

    def handled(self) -> list[dict[str, Any]]:
        """Every message any member reported as handled."""
        if not self.outfile.exists():
            return []
        text = self.outfile.read_text()
        # Only whole lines: a member may be writing one as this reads (a read raced a
        # write in CI once, and saw half a line); it is read whole by the next look.
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line]

    def kill_members(self) -> None:
        """Kill and reap every member process still running (at the end of a test)."""
        for member in self.members:
            if member.proc is not None and member.proc.poll() is None:
                member.proc.kill()
                member.proc.wait()


class Member:
    """A member of a consumer group that writes what it handles to the backend's outfile."""

    def __init__(self, backend: Backend, topic: str, group: str, concurrency: int,
                 sleep: float) -> None:
        self.backend = backend
        self.args = (backend.url, topic, group, str(backend.outfile), concurrency, sleep)
        self.proc: subprocess.Popen[bytes] | None = None
        self.app: App | None = None

    async def start(self) -> None:
        """Start the member and wait until it is built (not yet assigned)."""
        if not self.backend.multiprocess:
            self.app = build(*self.args)
            await self.app.start()
            return
        url, topic, group, outfile, concurrency, sleep = self.args
        command = [sys.executable, "-m", "tidings.testing._member", url, topic, group,
                   outfile, "--concurrency", str(concurrency), "--sleep", str(sleep)]
        with open(self.backend.tmp / "members.log", "ab") as log:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log)
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        self.proc.stdout.close()
        assert line.strip() == b"ready", line

    async def kill(self) -> None:
        """Die at once: SIGKILL, or an abrupt in-process stop."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(self.proc.wait)
        elif self.app is not None:
            crash(self.app)

    async def stop(self) -> None:
        """Shut down gracefully: SIGTERM, or ``app.stop()``."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(self.proc.wait, 30)
            assert code == 0, f"member exited with {code}"
        elif self.app is not None:
            await self.app.stop()
