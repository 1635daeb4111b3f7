"""The conformance suite as a backend of another package runs it: registered by entry
point, a test module of three lines; a capability it does not declare is refused, and the
suite asserts the refusal instead of skipping (docs/backends.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

BACKEND = '''
from tidings import ConfigurationError
from tidings.backends import memory
from tidings.ports import Capability


class LesserTransport(memory.MemoryTransport):
    """The memory backend without delays, priorities or replay."""

    system = "lesser"
    capabilities = memory.MemoryTransport.capabilities - {
        Capability.DELAY, Capability.PRIORITY, Capability.REPLAY}

    async def offsets_for_time(self, topic, timestamp):
        raise ConfigurationError("lesser:// does not have the 'replay' capability")

    async def set_offsets(self, group, offsets):
        raise ConfigurationError("lesser:// does not have the 'replay' capability")


def from_url(url):
    return LesserTransport(memory.from_url(url).broker)
'''

SUITE = '''
from tidings.testing.conformance import conformance_tests

globals().update(conformance_tests(url_factory=lambda name: f"lesser://{name}"))
'''


def test_an_outside_backend_runs_the_suite_and_its_refusals(tmp_path: Path) -> None:
    (tmp_path / "lesser_backend.py").write_text(BACKEND)
    info = tmp_path / "lesser_backend-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lesser-backend\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[tidings.backends]\nlesser = lesser_backend\n")
    (tmp_path / "test_lesser.py").write_text(SUITE)
    selected = "delay or priority or replay or capabilit or revoked or no_longer or typed"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA",
         "test_lesser.py", "-k", selected],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True, text=True, timeout=120, check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "skipped" not in out, out
    passed = {line.split("::")[1] for line in out.splitlines() if line.startswith("PASSED")}
    # Tests of what it lacks ran as refusals; the rest ran as they do everywhere.
    assert {"test_delayed_messages_arrive_not_before_their_time",
            "test_work_queue_runs_higher_priority_first_and_each_item_once",
            "test_replay_from_earliest_latest_and_a_point_in_time",
            "test_a_capability_is_accepted_if_declared_else_refused[delay]",
            "test_a_capability_is_accepted_if_declared_else_refused[groups]",
            "test_a_partition_is_revoked_and_committed_before_its_next_owner_gets_it",
            "test_delivery_with_typed_payload_and_envelope"} <= passed, textwrap.shorten(out, 2000)
