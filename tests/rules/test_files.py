"""Rule files: what loads, and bad files refused with the file, the line and the reason."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tidings.rules import Enqueue, Publish, Route, RuleEngine, RuleFileError, Tag

from .helpers import Payment

GOOD = """\
rules:
  - name: card-testing
    description: three declined payments of one user in ten minutes
    topic: payments
    when: status == "declined"
    window:
      by: userId
      within: 10m
      aggregates:
        total: {sum: amount}
        countries: {distinct: card.country}
      having: window.count >= 3 and window.total > 20
      reset: true
    then:
      - publish:
          topic: fraud
          key: userId
          payload: {type: FRAUD_SUSPECTED}
          fields: {userId: userId, declines: window.count}
      - enqueue: {queue: reviews, priority: 7, fields: {orderId: orderId}}
      - tag: [fraud-suspected, hold]
      - route: payments.review
  - name: disabled
    enabled: false
    topic: payments
    then: [{tag: never}]
"""


def engine_for(path: Path) -> RuleEngine:
    return RuleEngine(files=[path], schemas={"payments": Payment}, reload_interval=None)


def test_a_valid_yaml_file_loads_its_enabled_rules(tmp_path: Path) -> None:
    path = tmp_path / "fraud.yaml"
    path.write_text(GOOD)
    engine = engine_for(path)
    assert engine.rule_names == ["card-testing"]
    rule = engine._by_topic["payments"][0].rule
    assert rule.source == "fraud.yaml:2"
    assert [type(a) for a in rule.then] == [Publish, Enqueue, Tag, Route]
    assert rule.window is not None and rule.window.seconds == 600


def test_a_json_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text('{"rules": [{"name": "big", "topics": ["payments"],\n'
                    '  "when": "amount > 100", "then": [{"tag": "big"}]}]}')
    assert engine_for(path).rule_names == ["big"]


def _rule(body: str) -> str:
    return "rules:\n  - name: r\n    topic: payments\n" + textwrap.indent(
        textwrap.dedent(body), "    ")


BAD = [
    # (file text, line, reason)
    ("rules:\n  - name: r\n    when: [unclosed\n", 4, "not valid YAML"),
    (_rule("when: stauts == 'declined'\nthen: [{tag: x}]\n"), 4,
     "unknown field 'stauts' in \"stauts == 'declined'\" (did you mean 'status'?)"),
    (_rule("when: card.contry == 'FR'\nthen: [{tag: x}]\n"), 4,
     "unknown attribute: 'contry'"),
    (_rule("when: amount > 'ten'\nthen: [{tag: x}]\n"), 4, "data type mismatch"),
    (_rule("when: |\n  status == 'declined'\n  and (amount > 3\nthen: [{tag: x}]\n"), 6,
     "syntax error"),
    (_rule("when: status == 'declined'\nthne: [{tag: x}]\n"), 5, "thne: Extra inputs"),
    (_rule("when: 'true'\n"), 2, "then: Field required"),
    (_rule("then:\n  - tag: x\n    route: y\n"), 5, "exactly one of publish, enqueue"),
    (_rule("then:\n  - publish: {topic: t, fields: {n: window.count}}\n"), 5,
     "unknown field 'window'"),
    (_rule("window: {by: userId, within: soon, having: window.count > 1}\nthen: [{tag: x}]\n"),
     4, "a duration is a positive number"),
    (_rule("window:\n  by: userId\n  within: 1m\n  having: window.cnt > 1\nthen: [{tag: x}]\n"),
     7, "unknown attribute: 'cnt' in 'window.cnt > 1' (did you mean 'count'?)"),
    (_rule("then: [{enqueue: {queue: q, priority: 12}}]\n"), 4, "less than or equal to 9"),
    ("rules:\n  - name: a\n    topic: p\n    then: [{tag: x}]\n"
     "  - name: a\n    topic: p\n    then: [{tag: y}]\n", 5, "rule 'a' is defined twice"),
    ("rules: {}\n", 1, "rules: Input should be a valid list"),
]


@pytest.mark.parametrize(("text", "line", "reason"), BAD)
def test_a_bad_file_is_refused_with_file_line_and_reason(
        tmp_path: Path, text: str, line: int, reason: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RuleFileError) as info:
        engine_for(path)
    error = info.value
    assert (error.file, error.line) == (path, line), str(error)
    assert reason in error.reason
    assert str(error).startswith(f"{path}:{line}: ")


def test_a_bad_json_file_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"rules": [\n  {"name": "x",\n   "topic": "payments" "then": []}]}')
    with pytest.raises(RuleFileError, match="not valid JSON") as info:
        engine_for(path)
    assert info.value.line == 3
    path.write_text('{"rules": [\n  {"name": "x", "topic": "payments",\n'
                    '   "when": "nope == 1", "then": [{"tag": "t"}]}]}')
    with pytest.raises(RuleFileError, match="unknown field 'nope'") as info:
        engine_for(path)
    assert info.value.line == 3


def test_a_rule_name_used_in_another_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("rules: [{name: r, topic: p, then: [{tag: a}]}]\n")
    (tmp_path / "b.yaml").write_text("rules:\n  - {name: r, topic: p, then: [{tag: b}]}\n")
    with pytest.raises(RuleFileError, match="already used by a rule in") as info:
        RuleEngine(files=[tmp_path])
    assert (info.value.file.name, info.value.line) == ("b.yaml", 2)
