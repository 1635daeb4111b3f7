"""Capability flags: each transport declares what it honours, an App refuses at start
what its transport lacks (by name), and backends of other packages load by entry point."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

import pytest

from tidings import App, ConfigurationError, testing
from tidings._backends import SCHEMES, load_transport
from tidings.backends.memory import MemoryTransport
from tidings.ports import BASE_CAPABILITIES, Capability


def test_each_builtin_transport_declares_its_capabilities() -> None:
    from tidings.backends.kafka import KafkaTransport
    from tidings.backends.sqlite._transport import SqliteTransport

    assert Capability.DURABILITY not in MemoryTransport.capabilities
    assert Capability.LOOKUP in SqliteTransport.capabilities
    assert {Capability.EXACTLY_ONCE, Capability.REPLICATION} <= KafkaTransport.capabilities
    for transport in (MemoryTransport, SqliteTransport, KafkaTransport):
        assert Capability.EXACTLY_ONCE not in transport.capabilities or \
            hasattr(transport, "subscribe_transactional")
    assert Capability.EXACTLY_ONCE not in BASE_CAPABILITIES


@pytest.mark.parametrize(("missing", "declare", "option"), [
    (Capability.GROUPS, {}, "group 'svc'"),
    (Capability.ORDER_PER_KEY, {"concurrency": 4}, "concurrency=4"),
    (Capability.EXACTLY_ONCE, {"exactly_once": True}, "exactly_once=True"),
])
def test_a_missing_capability_is_refused_at_start_by_name(
    missing: Capability, declare: dict[str, object], option: str
) -> None:
    async def main() -> None:
        app = App("svc", broker=testing.memory_url())
        app.transport.capabilities = app.transport.capabilities - {missing}  # type: ignore[misc]

        @app.subscriber("orders", **declare)  # type: ignore[call-overload]
        async def handle(payload: dict) -> None: ...

        with pytest.raises(ConfigurationError) as caught:
            await app.start()
        text = str(caught.value)
        assert f"'{missing.value}'" in text and "memory backend" in text
        assert option in text and "handle" in text

    asyncio.run(main())


def test_a_work_queue_needs_priorities() -> None:
    async def main() -> None:
        app = App("svc", broker=testing.memory_url())
        app.transport.capabilities = BASE_CAPABILITIES - {Capability.PRIORITY}  # type: ignore[misc]

        @app.worker("emails")
        async def send(payload: dict) -> None: ...

        with pytest.raises(ConfigurationError, match="'priority'"):
            await app.start()

    asyncio.run(main())


def test_backends_of_other_packages_load_by_entry_point(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "outside_backend.py").write_text(textwrap.dedent('''
        from tidings.backends.memory import MemoryBroker, MemoryTransport

        def from_url(url):
            return MemoryTransport(MemoryBroker())
    '''))
    info = tmp_path / "outside_backend-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: outside-backend\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[tidings.backends]\noutside = outside_backend\nkafka = outside_backend\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert isinstance(load_transport("outside://anything"), MemoryTransport)
    # A built-in scheme is never taken over by an entry point.
    assert type(load_transport("kafka://127.0.0.1:1")).__name__ == "KafkaTransport"
    with pytest.raises(ConfigurationError, match="outside://"):
        load_transport("nowhere://x")
    assert "outside" not in SCHEMES
    sys.modules.pop("outside_backend", None)
