"""Fixtures shared by every test: backends, isolated names, and group members."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tidings import App, testing

ROOT = Path(__file__).resolve().parent.parent
MEMBER = ROOT / "tests" / "conformance" / "member.py"

BACKENDS = ["memory", "sqlite"]
if (ROOT / "tests" / "kafka_broker.py").exists():
    from kafka_broker import running_tansu

    BACKENDS.append("kafka")

    @pytest.fixture(scope="session")
    def kafka_url() -> Iterator[str]:
        """One tansu broker for the whole test session (defined here, not in
        kafka_broker, which the benchmarks import without pytest)."""
        with running_tansu() as url:
            yield url


@dataclass
class Backend:
    """One backend under test, with a broker URL isolated for this test."""

    name: str
    url: str
    multiprocess: bool
    tmp: Path
    members: list[Member] = field(default_factory=list)

    def app(self, name: str, **kwargs: Any) -> App:
        """An App on this backend."""
        return App(name, broker=self.url, **kwargs)

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


class Member:
    """A member of a consumer group that writes what it handles to the backend's outfile."""

    def __init__(self, backend: Backend, topic: str, group: str, concurrency: int,
                 sleep: float) -> None:
        self.backend = backend
        self.args = [backend.url, topic, group, str(backend.outfile),
                     "--concurrency", str(concurrency), "--sleep", str(sleep)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.app: App | None = None

    async def start(self) -> None:
        if self.backend.multiprocess:
            with open(self.backend.tmp / "members.log", "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, str(MEMBER), *self.args],
                    stdout=subprocess.PIPE, stderr=log,
                )
            assert self.proc.stdout is not None
            line = await asyncio.to_thread(self.proc.stdout.readline)
            self.proc.stdout.close()
            assert line.strip() == b"ready", line
        else:
            sys.path.insert(0, str(MEMBER.parent))
            from member import build  # type: ignore[import-not-found]

            a = self.args
            self.app = build(a[0], a[1], a[2], a[3], int(a[5]), float(a[7]))
            await self.app.start()

    async def kill(self) -> None:
        """Die at once: SIGKILL, or an abrupt in-process stop."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(self.proc.wait)
        elif self.app is not None:
            testing.crash(self.app)

    async def stop(self) -> None:
        """Shut down gracefully: SIGTERM, or ``app.stop()``."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(self.proc.wait, 30)
            assert code == 0, f"member exited with {code}"
        elif self.app is not None:
            await self.app.stop()


if (ROOT / "tests" / "rabbitmq_broker.py").exists():
    from rabbitmq_broker import running_rabbitmq

    BACKENDS.append("amqp")

    @pytest.fixture(scope="session")
    def amqp_url() -> Iterator[str]:
        """One private RabbitMQ node for the whole test session (~5 s to start)."""
        with running_rabbitmq() as url:
            yield url


def _kafka_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("kafka_url"))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each conformance test runs once per backend, on a broker isolated for it."""
    name = request.param
    if name == "memory":
        url, multiprocess = testing.memory_url(session_timeout=1.5), False
    elif name == "sqlite":
        url, multiprocess = f"sqlite:///{tmp_path}/bus.db?session_timeout=1.5", True
    elif name == "amqp":
        url = f"{request.getfixturevalue('amqp_url')}?session_timeout=1.5"
        multiprocess = True
    else:
        url, multiprocess = _kafka_url(request), True
    b = Backend(name, url, multiprocess, tmp_path)
    yield b
    for member in b.members:
        if member.proc is not None and member.proc.poll() is None:
            member.proc.kill()
            member.proc.wait()


@pytest.fixture
def names() -> Any:
    """Unique topic and group names, so tests never see each other's data on a shared broker."""
    suffix = uuid.uuid4().hex[:8]
    return lambda base: f"{base}-{suffix}"
