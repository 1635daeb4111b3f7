"""Rule files (YAML or JSON): parsing, validation, and where in the file a problem is.

A rule file is configuration, and may come from a less trusted hand than the code: files
over :data:`MAX_FILE_BYTES` are refused, and so are YAML aliases (``&a`` / ``*a``), whose
nesting lets a few hundred bytes expand to gigabytes ("billion laughs")."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ._errors import RuleError, RuleFileError
from ._rule import Action, AggregateOp, Enqueue, Publish, Route, Rule, Tag, Window

__all__ = ["MAX_FILE_BYTES", "load_file"]

SUFFIXES = (".yaml", ".yml", ".json")
#: The largest rule file loaded (1 MiB): thousands of rules, far from a memory risk.
MAX_FILE_BYTES = 1 << 20


class _NoAliasLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing aliases (anchors alone are harmless)."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed in rule files",
                event.start_mark)
        return super().compose_node(parent, index)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _WindowSpec(_Strict):
    by: str
    within: str | float
    having: str
    aggregates: dict[str, dict[AggregateOp, str]] = {}
    reset: bool = False

    @model_validator(mode="after")
    def _one_op_each(self) -> _WindowSpec:
        for name, ops in self.aggregates.items():
            if len(ops) != 1:
                raise ValueError(f"aggregate {name!r} needs exactly one of sum, min, max, "
                                 "avg, distinct")
        return self


class _PublishSpec(_Strict):
    topic: str
    payload: dict[str, Any] = {}
    fields: dict[str, str] = {}
    key: str | None = None


class _EnqueueSpec(_Strict):
    queue: str
    payload: dict[str, Any] = {}
    fields: dict[str, str] = {}
    key: str | None = None
    priority: int = Field(0, ge=0, le=9)


class _ActionSpec(_Strict):
    publish: _PublishSpec | None = None
    enqueue: _EnqueueSpec | None = None
    tag: str | list[str] | None = None
    route: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> _ActionSpec:
        given = [k for k in ("publish", "enqueue", "tag", "route") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("an action is exactly one of publish, enqueue, tag, route")
        return self

    def action(self) -> Action:
        if self.publish is not None:
            return Publish(**self.publish.model_dump())
        if self.enqueue is not None:
            return Enqueue(**self.enqueue.model_dump())
        if self.tag is not None:
            return Tag(*([self.tag] if isinstance(self.tag, str) else self.tag))
        assert self.route is not None
        return Route(self.route)


class _RuleSpec(_Strict):
    name: str
    description: str = ""
    topic: str | None = None
    topics: list[str] = []
    when: str = "true"
    window: _WindowSpec | None = None
    then: list[_ActionSpec] = Field(min_length=1)
    enabled: bool = True

    def rule(self, source: str) -> Rule:
        window = None
        if self.window is not None:
            w = self.window
            aggregates = {n: next(iter(ops.items())) for n, ops in w.aggregates.items()}
            window = Window(w.by, w.within, w.having, aggregates, w.reset)
        topics = [*([self.topic] if self.topic else []), *self.topics]
        return Rule(self.name, tuple(topics), self.when, tuple(a.action() for a in self.then),
                    window, self.description, source)


class _FileSpec(_Strict):
    rules: list[_RuleSpec]


def load_file(path: Path, check: Callable[[Rule], object]) -> list[Rule]:
    """The enabled rules of ``path``, each passed to ``check`` (which compiles it and
    raises RuleError). Every problem is a :class:`RuleFileError` with its line."""
    text = _read(path)
    data = _parse(path, text)
    root = _node_tree(text)
    try:
        spec = _FileSpec.model_validate(data)
    except pydantic.ValidationError as exc:
        # An unknown key first: a typo explains the "Field required" that comes with it.
        error = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        raise RuleFileError(path, _line(root, error["loc"]),
                            f"{where}: {error['msg']}") from None
    rules: list[Rule] = []
    names: dict[str, int | None] = {}
    for index, item in enumerate(spec.rules):
        line = _line(root, ("rules", index))
        if item.name in names:
            raise RuleFileError(path, line, f"rule {item.name!r} is defined twice (first on "
                                f"line {names[item.name]})")
        names[item.name] = line
        try:
            rule = item.rule(f"{path.name}:{line}")
            check(rule)
        except RuleError as exc:
            at = _line(root, ("rules", index, *exc.path), exc.line_offset)
            raise RuleFileError(path, at, f"rule {item.name!r}: {exc}") from None
        except Exception as exc:  # a failure of rule-engine itself: still this rule's
            raise RuleFileError(path, line, f"rule {item.name!r} cannot be compiled: "
                                f"{type(exc).__name__}: {exc}") from None
        if item.enabled:
            rules.append(rule)
    return rules


def _read(path: Path) -> str:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise RuleFileError(path, None, f"larger than {MAX_FILE_BYTES} bytes: refused")
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleFileError(path, None, f"cannot read it: {exc}") from None


def _parse(path: Path, text: str) -> Any:
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise RuleFileError(path, exc.lineno, f"not valid JSON: {exc.msg}") from None
        except RecursionError:
            raise RuleFileError(path, None, "not valid JSON: nested too deeply") from None
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except RecursionError:
        raise RuleFileError(path, None, "not valid YAML: nested too deeply") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise RuleFileError(path, line, f"not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise RuleFileError(path, None, f"not valid YAML: {exc}") from None


def _node_tree(text: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=_NoAliasLoader)
    except (yaml.YAMLError, RecursionError):
        return None  # JSON that YAML cannot read (tabs): errors then have no line


def _line(node: yaml.Node | None, path: Sequence[Any], offset: int = 0) -> int | None:
    """The 1-based line of the deepest node along ``path`` (plus ``offset`` lines
    into a multi-line scalar)."""
    if node is None:
        return None
    for part in path:
        child = _child(node, part)
        if child is None:
            break
        node = child
    block = isinstance(node, yaml.ScalarNode) and node.style in ("|", ">")
    return int(node.start_mark.line) + 1 + (1 if block else 0) + offset


def _child(node: yaml.Node, part: Any) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return value  # type: ignore[no-any-return]
    elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) \
            and 0 <= part < len(node.value):
        return node.value[part]  # type: ignore[no-any-return]
    return None
