"""Reference services tested in-process on the in-memory bus with tidings.testing.TestBus:
no supervisor, no sleeps; the service's own database is real (SQLite in a temp dir)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from reference.common.events import Topics, UserRegistered
from reference.common.settings import Settings
from reference.notifications.service import build

from tidings import Headers
from tidings.ports import OutRecord
from tidings.testing import TestBus


def test_notifications_log_each_user_once_whatever_the_redeliveries(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="reference.notifications")

    async def scenario() -> int:
        service = build(Settings(data_dir=tmp_path))
        await service.db.create()
        try:
            async with TestBus(service.bus) as bus:
                alice = UserRegistered(userId=1, username="Alice Smith")
                first = await service.bus.publish(Topics.USERS, alice, key="user-1")
                # the same message again (a redelivery: the very record, appended again,
                # as publish refuses a caller's tidings-id), and the same user under a new id
                (record,) = await service.bus.transport.read(
                    Topics.USERS, first.partition or 0, first.offset or 0, 1)
                await service.bus.transport.append([OutRecord(
                    Topics.USERS, record.value, record.key, dict(record.headers))])
                assert record.headers[Headers.ID] == first.id
                await service.bus.publish(Topics.USERS, alice, key="user-1")
                await service.bus.publish(Topics.USERS, UserRegistered(userId=2, username="Bo"))
                await bus.idle()
                assert len(bus.published(Topics.USERS)) == 4
        finally:
            await service.db.close()
        return len([r for r in caplog.records if "Received registration event" in r.message])

    assert asyncio.run(scenario()) == 2
    lines = [r.message for r in caplog.records if "Received" in r.message]
    assert sorted(lines) == ["Received registration event for user 1 (Alice Smith)",
                             "Received registration event for user 2 (Bo)"]
