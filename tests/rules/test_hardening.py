"""Rules that must not crash, stall or exhaust a service: deep expressions, YAML bombs,
backtracking regexes, large windows, and files that fail for a reason fixed elsewhere."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from tidings.rules import Rule, RuleEngine, RuleError, RuleFileError, Tag, Window

from .helpers import Payment, envelope, payment
from .test_reload import tags, touch

DEEP = " + ".join(["amount"] * 500) + " > 1"


def test_a_500_term_expression_is_a_rule_error_with_its_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="nested too deeply"):
        RuleEngine(rules=[Rule("deep", topics=("payments",), when=DEEP, then=[Tag("x")])],
                   schemas={"payments": Payment}, reload_interval=None)
    path = tmp_path / "rules.yaml"
    path.write_text(f"rules:\n  - name: deep\n    topic: payments\n    when: {DEEP}\n"
                    "    then: [{tag: x}]\n")
    with pytest.raises(RuleFileError, match="nested too deeply") as caught:
        RuleEngine(files=[path], schemas={"payments": Payment})
    assert (caught.value.file, caught.value.line) == (path, 4)


def test_a_file_that_failed_is_tried_again_without_changing(tmp_path: Path) -> None:
    # b.yaml clashes with a rule of a.yaml; once a.yaml renames it, b.yaml (unchanged,
    # same timestamp) must load: its failure was not its own.
    rule = "rules:\n  - name: {}\n    topic: payments\n    when: amount > 100\n" \
           "    then: [{{tag: {}}}]\n"
    touch(tmp_path / "a.yaml", rule.format("big", "a"))
    engine = RuleEngine(files=[tmp_path / "a.yaml"], schemas={"payments": Payment},
                        reload_interval=0)
    touch(tmp_path / "b.yaml", rule.format("big", "b"))
    engine._paths.append(tmp_path / "b.yaml")
    assert [e.file.name for e in engine.reload()] == ["b.yaml"]
    touch(tmp_path / "a.yaml", rule.format("bigger", "a"))
    assert engine.reload() == [] and engine.errors == {}
    assert tags(engine, 500) == {"a", "b"}


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n"
    for p, n in zip("abcdefgh", "bcdefghi", strict=True)) + "rules: *i\n"


def test_yaml_aliases_are_refused_and_files_are_capped(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    assert len(BOMB) < 700
    started = time.monotonic()
    with pytest.raises(RuleFileError, match="aliases") as caught:
        RuleEngine(files=[bomb])
    assert time.monotonic() - started < 3.0 and caught.value.line == 2  # expanded: hours
    big = tmp_path / "big.json"
    big.write_text('{"rules": []}' + " " * (2 << 20))  # over the 1 MiB cap
    with pytest.raises(RuleFileError, match="larger than"):
        RuleEngine(files=[big])


def test_a_backtracking_regex_on_event_data_runs_in_linear_time() -> None:
    # With Python's re, (a+)+b on 28 a's and no b takes ~16 s; on RE2, microseconds.
    engine = RuleEngine(rules=[Rule("re", topics=("payments",), when='status =~ "(a+)+b"',
                                    then=[Tag("x")])],
                        schemas={"payments": Payment}, reload_interval=None)
    event = payment(status="a" * 28 + "c")
    started = time.monotonic()
    decision = asyncio.run(engine.evaluate(event, envelope(event)))
    assert not decision and time.monotonic() - started < 3.0  # backtracking: ~16 s
    matching = payment(status="aaab")
    assert asyncio.run(engine.evaluate(matching, envelope(matching))).tags == {"x"}
    with pytest.raises(RuleError, match="invalid regular expression"):
        RuleEngine(rules=[Rule("backref", topics=("payments",), when=r'status =~ "(a)\\1"',
                               then=[Tag("x")])], schemas={"payments": Payment})


def test_window_aggregates_are_incremental_and_exact() -> None:
    window = Window(by="userId", within=100, having="window.count >= 1", aggregates={
        "total": ("sum", "amount"), "mean": ("avg", "amount"), "low": ("min", "amount"),
        "high": ("max", "amount"), "kinds": ("distinct", "status")})
    engine = RuleEngine(rules=[Rule("w", topics=("payments",), window=window,
                                    then=[Tag("t")])],
                        schemas={"payments": Payment}, reload_interval=None)

    def at(second: float, amount: float, status: str = "declined") -> dict[str, object]:
        event = payment(amount=amount, status=status)
        decision = asyncio.run(engine.evaluate(event, envelope(event, at=1e9 + second)))
        window = decision.fired[0].window
        assert window is not None
        return dict(window)

    at(0, 5)
    at(10, 3, "approved")
    assert at(20, 4) == {"count": 3, "key": 1, "total": 12, "mean": 4, "low": 3,
                         "high": 5, "kinds": 2}
    # 0 and 10 leave the window: the running values must forget them.
    assert at(110, 1) == {"count": 2, "key": 1, "total": 5, "mean": 2.5, "low": 1,
                          "high": 4, "kinds": 1}


def test_window_aggregates_cost_the_same_however_full_the_window() -> None:
    window = Window(by="userId", within=100, having="window.count >= 1", aggregates={
        "total": ("sum", "amount"), "low": ("min", "amount"), "kinds": ("distinct", "status")})
    engine = RuleEngine(rules=[Rule("w", topics=("payments",), window=window,
                                    then=[Tag("t")])],
                        schemas={"payments": Payment}, reload_interval=None)

    async def run(start: float, first: int, count: int, user: int = 1) -> int:
        # The work done, counted as function calls (Python and C, in every module): a
        # count, not a time, so a busy machine cannot fail the test or hide a regression.
        calls = 0

        def count_calls(frame: object, event: str, arg: object) -> None:
            nonlocal calls
            if event in ("call", "c_call"):
                calls += 1

        for n in range(first, first + count):
            event = payment(user=user, amount=1)
            message = envelope(event, at=start + n * 0.001)
            sys.setprofile(count_calls)
            try:
                await engine.evaluate(event, message)
            finally:
                sys.setprofile(None)
        return calls

    now = time.time()
    early = asyncio.run(run(now, 0, 1000))  # 1 ms apart: the window holds 0 to 1,000
    asyncio.run(run(now, 1000, 9000))
    late = asyncio.run(run(now, 10_000, 1000))  # the window holds 10,000 to 11,000
    assert early > 50_000, early  # the counter counts (some 500 calls an event)
    # Rescanning the window for each event would be about ten times the work.
    assert late < 1.5 * early, (early, late)
    # A replay of old events (message time 2001) keeps its window: nothing is forgotten
    # because the wall clock is far ahead.
    replay = 1e9
    asyncio.run(run(replay, 0, 2500, user=2))
    event = payment(user=2, amount=1)
    facts = asyncio.run(engine.evaluate(event, envelope(event, at=replay + 2.5))).fired[0]
    assert facts.window is not None and facts.window["count"] == 2501
