"""The sqlite:// URL: paths, options and their validation, opening failures."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tidings import BrokerUnavailableError, ConfigurationError, TransportError
from tidings._backends import load_transport
from tidings.backends.sqlite import SqliteTransport, from_url
from tidings.backends.sqlite._options import parse_url


def test_relative_and_absolute_paths_follow_sqlalchemy() -> None:
    assert parse_url("sqlite:///data/bus.db").path == Path("data/bus.db")
    assert parse_url("sqlite:////var/lib/bus.db").path == Path("/var/lib/bus.db")
    assert parse_url("sqlite:///my%20bus.db").path == Path("my bus.db")


def test_defaults_and_explicit_options() -> None:
    default = parse_url("sqlite:///bus.db")
    assert (default.partitions, default.session_timeout, default.heartbeat) == (4, 3.0, 0.5)
    assert (default.retention_hours, default.retention_bytes) == (168.0, 0)
    custom = parse_url(
        "sqlite:///bus.db?partitions=8&session_timeout=6&retention_hours=0&retention_bytes=1000"
    )
    assert (custom.partitions, custom.session_timeout, custom.heartbeat) == (8, 6.0, 1.0)
    assert (custom.retention_hours, custom.retention_bytes) == (0.0, 1000)
    assert parse_url("sqlite:///bus.db?heartbeat=0.2").heartbeat == 0.2


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///bus.db?partitions=0", "partitions"),
        ("sqlite:///bus.db?partitions=two", "not an integer"),
        ("sqlite:///bus.db?partitions=1.5", "not an integer"),
        ("sqlite:///bus.db?session_timeout=-1", "session_timeout"),
        ("sqlite:///bus.db?session_timeout=nan", "session_timeout"),
        ("sqlite:///bus.db?heartbeat=5", "below session_timeout"),
        ("sqlite:///bus.db?retention_hours=-1", "retention_hours"),
        ("sqlite:///bus.db?retention_bytes=-5", "retention_bytes"),
        ("sqlite:///bus.db?partition=4", "unknown sqlite:// option"),
        ("sqlite:///bus.db?partitions=2&partitions=3", "given twice"),
        ("sqlite://host/bus.db", "names a host"),
        ("sqlite:///", "database file path"),
        ("sqlite:///:memory:", "memory://"),
    ],
)
def test_bad_urls_are_rejected_clearly(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        from_url(url)


def test_loads_by_scheme_and_creates_the_folder(tmp_path: Path) -> None:
    transport = load_transport(f"sqlite:///{tmp_path}/deep/er/bus.db")
    assert isinstance(transport, SqliteTransport)
    assert transport.shared_between_processes

    async def main() -> None:
        await transport.start()
        assert await transport.ensure_topic("t") == 4
        await transport.close()
        await transport.close()  # idempotent
        with pytest.raises(TransportError, match="closed"):
            await transport.ensure_topic("t")

    asyncio.run(main())
    assert (tmp_path / "deep" / "er" / "bus.db").exists()


def test_a_file_that_is_not_a_database_is_reported(tmp_path: Path) -> None:
    (tmp_path / "bus.db").write_bytes(b"this is not SQLite" * 100)

    async def main() -> None:
        transport = from_url(f"sqlite:///{tmp_path}/bus.db")
        with pytest.raises(BrokerUnavailableError, match="not a database"):
            await transport.start()
        await transport.close()

    asyncio.run(main())


def test_a_folder_in_place_of_the_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "bus.db").mkdir()

    async def main() -> None:
        transport = from_url(f"sqlite:///{tmp_path}/bus.db")
        with pytest.raises(BrokerUnavailableError, match="cannot open"):
            await transport.start()
        await transport.close()

    asyncio.run(main())
