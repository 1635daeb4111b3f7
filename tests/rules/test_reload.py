"""Hot reload: changed files take effect; a broken file keeps the previous rules."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from tidings import App, testing
from tidings.rules import RuleEngine, RuleFileError

from .helpers import Payment, envelope, payment

V1 = "rules:\n  - name: big\n    topic: payments\n    when: amount > 100\n    then: [{tag: v1}]\n"
V2 = V1.replace("amount > 100", "amount > 5").replace("v1", "v2")
BROKEN = V1.replace("amount > 100", "amount > 5 and colour == 'red'").replace("v1", "v3")


def touch(path: Path, text: str) -> None:
    path.write_text(text)
    stamp = time.time_ns() + 10_000_000  # a new mtime even on coarse file systems
    os.utime(path, ns=(stamp, stamp))


def tags(engine: RuleEngine, amount: float) -> frozenset[str]:
    event = payment(amount=amount)
    return asyncio.run(engine.evaluate(event, envelope(event))).tags


def test_changes_are_picked_up_and_a_broken_file_keeps_the_old_rules(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "rules.yaml"
    touch(path, V1)
    engine = RuleEngine(files=[tmp_path], schemas={"payments": Payment}, reload_interval=0)
    assert tags(engine, 50) == frozenset()
    touch(path, V2)
    assert tags(engine, 50) == {"v2"}  # reloaded on evaluation
    touch(path, BROKEN)
    assert tags(engine, 50) == {"v2"}  # the broken version is not active...
    error = engine.errors[path]
    assert (error.file, error.line) == (path, 4) and "unknown field 'colour'" in error.reason
    assert "1 previous rules stay active" in caplog.text  # ...and it was reported
    caplog.clear()
    assert [str(e) for e in engine.reload()] == [str(error)]  # tried again at every check...
    assert "previous rules stay active" not in caplog.text  # ...but reported once
    touch(path, V1)
    assert tags(engine, 500) == {"v1"} and engine.errors == {}
    (tmp_path / "more.json").write_text(
        '{"rules": [{"name": "all", "topic": "payments", "then": [{"tag": "all"}]}]}')
    assert engine.reload() == [] and engine.rule_names == ["big", "all"]
    path.unlink()
    assert engine.reload() == [] and engine.rule_names == ["all"]


def test_a_broken_file_at_start_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(BROKEN)
    with pytest.raises(RuleFileError, match=r"rules.yaml:4: rule 'big': unknown field"):
        RuleEngine(files=[path], schemas={"payments": Payment})
    with pytest.raises(RuleFileError, match="cannot read it"):
        RuleEngine(files=[tmp_path / "missing.yaml"])


def test_attached_engine_reports_a_broken_file_without_traffic(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    touch(path, V1)

    async def main() -> None:
        app = App("rules", broker=testing.memory_url())
        engine = RuleEngine(app, files=[path], schemas={"payments": Payment},
                            reload_interval=0.02).attach(app)
        async with app:
            touch(path, BROKEN)
            for _ in range(100):
                if path in engine.errors:
                    break
                await asyncio.sleep(0.02)
        assert path in engine.errors and engine.rule_names == ["big"]

    asyncio.run(main())
