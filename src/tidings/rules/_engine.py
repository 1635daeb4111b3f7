"""The rules engine: rules from files and Python, evaluated inside subscribers.

Files are reloaded when they change (checked at most every ``reload_interval``
seconds, on evaluation and, with ``attach(app)``, in the background). A file that
fails to load is reported once with its line and reason, its previous rules stay
active, and it is tried again at every check until it loads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic

from .._errors import ConfigurationError
from .._message import Message, current_message
from .._waiting import cancel_and_wait
from ._compiled import CompiledRule
from ._decision import Decision, Fired
from ._effects import Effects
from ._errors import RuleError, RuleFileError
from ._expr import Scope
from ._files import SUFFIXES, load_file
from ._rule import Route, Rule, Tag
from ._types import RESERVED, facts_of, fields_of, value_type
from ._windows import Windows

if TYPE_CHECKING:
    from .._app import App

__all__ = ["RuleEngine"]

log = logging.getLogger("tidings.rules")
_Stamp = tuple[int, int]


@dataclass
class _FileRules:
    stamp: _Stamp | None
    rules: list[dict[str, CompiledRule]] = field(default_factory=list)


class RuleEngine:
    """Rules evaluated on the messages of their topics.

    ``files`` are rule files or folders of them (``*.yaml``, ``*.yml``, ``*.json``);
    ``rules`` are :class:`Rule` values declared in Python. ``schemas`` maps a topic to
    the pydantic model of its events: rules on it are type-checked when loaded, so an
    unknown field is refused. ``context`` holds constants rules read as ``context.x``.
    Actions publish through ``app``, or through ``outbox`` in the handler's transaction
    when :meth:`evaluate` gets its ``session``. ``on_decision`` sees every decision.
    """

    def __init__(self, app: App | None = None, *, files: Iterable[str | Path] = (),
                 rules: Iterable[Rule] = (),
                 schemas: Mapping[str, type[pydantic.BaseModel]] | None = None,
                 context: Mapping[str, Any] | None = None, outbox: Any = None,
                 reload_interval: float | None = 1.0,
                 on_decision: Callable[[Decision], None] | None = None) -> None:
        self.schemas = dict(schemas or {})
        self.context = facts_of(dict(context or {}))
        self._context_types = {k: value_type(v) for k, v in self.context.items()}
        self._effects = Effects(app, outbox)
        self._paths = [Path(f) for f in files]
        self._python: list[dict[str, CompiledRule]] = []
        self._files: dict[Path, _FileRules] = {}
        self._by_topic: dict[str, list[CompiledRule]] = {}
        self._windows = Windows()
        self._checked = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self.reload_interval = reload_interval
        self.on_decision = on_decision
        #: The last 1,000 decisions, newest last (also logged on ``tidings.rules``).
        self.decisions: deque[Decision] = deque(maxlen=1000)
        #: Files that failed to load, with why; their previous rules stay active.
        self.errors: dict[Path, RuleFileError] = {}
        for rule in rules:
            self.add(rule)
        failed = self.reload()
        if failed:
            raise failed[0]

    # -- declaring and loading ---------------------------------------------------------

    def add(self, rule: Rule) -> Rule:
        """Add a rule declared in Python (checked now: RuleError if invalid)."""
        if rule.name in self.rule_names:
            raise RuleError(f"two rules are named {rule.name!r}")
        self._python.append(self._compile(rule))
        self._index()
        return rule

    @property
    def rule_names(self) -> list[str]:
        """The names of the active rules."""
        groups = [*self._python, *(r for f in self._files.values() for r in f.rules)]
        return [_name(g) for g in groups]

    def _compile(self, rule: Rule) -> dict[str, CompiledRule]:
        compiled = {}
        for topic in rule.topics:
            schema = self.schemas.get(topic)
            scope = Scope(fields_of(schema) if schema else None, self._context_types)
            compiled[topic] = CompiledRule(rule, scope)
        return compiled

    def reload(self) -> list[RuleFileError]:
        """Load the files that changed since they last loaded, and those that failed;
        return the errors (kept in :attr:`errors`, logged when new). A file that fails
        keeps its previous rules."""
        errors = []
        present = self._rule_files()
        for path in present:
            stamp = _stamp(path)
            state = self._files.setdefault(path, _FileRules((-1, -1)))  # never loaded
            if stamp == state.stamp:
                continue
            try:
                state.rules = self._load(path)
            except RuleFileError as exc:
                errors.append(exc)
                self._failed(path, exc, len(state.rules))
                continue
            # Only a load that worked is remembered: a file that failed is tried again
            # (it may have been read half-written, or clash with a rule fixed since).
            state.stamp = stamp
            self.errors.pop(path, None)
            log.info("loaded %d rules from %s", len(state.rules), path)
        for gone in set(self._files) - set(present):
            log.info("rule file %s is gone: its rules are removed", gone)
            del self._files[gone]
            self.errors.pop(gone, None)
        self._index()
        return errors

    def _failed(self, path: Path, exc: RuleFileError, active: int) -> None:
        known = self.errors.get(path)
        self.errors[path] = exc
        if known is None or str(known) != str(exc):  # logged once, not at every retry
            log.error("rule file not loaded, %d previous rules stay active: %s", active, exc)

    def _load(self, path: Path) -> list[dict[str, CompiledRule]]:
        taken = {_name(g): "Python code" for g in self._python}
        for other, state in self._files.items():
            if other != path:
                taken.update({_name(g): str(other) for g in state.rules})
        compiled: dict[str, dict[str, CompiledRule]] = {}

        def check(rule: Rule) -> None:
            if rule.name in taken:
                raise RuleError(f"the name is already used by a rule in {taken[rule.name]}")
            compiled[rule.name] = self._compile(rule)

        return [compiled[rule.name] for rule in load_file(path, check)]

    def _rule_files(self) -> list[Path]:
        found: list[Path] = []
        for path in self._paths:
            if path.is_dir():
                found.extend(sorted(p for p in path.iterdir() if p.suffix in SUFFIXES))
            else:
                found.append(path)
        return found

    def _index(self) -> None:
        by_topic: dict[str, list[CompiledRule]] = {}
        for group in [*self._python, *(r for f in self._files.values() for r in f.rules)]:
            for topic, compiled in group.items():
                by_topic.setdefault(topic, []).append(compiled)
        self._by_topic = by_topic

    def _maybe_reload(self) -> None:
        interval = self.reload_interval
        if interval is not None and time.monotonic() - self._checked >= interval:
            self._checked = time.monotonic()
            self.reload()

    # -- evaluating --------------------------------------------------------------------

    async def evaluate(self, event: Any, message: Message | None = None, *,
                       session: Any = None) -> Decision:
        """Evaluate the rules of ``message``'s topic on ``event`` (the decoded payload)
        and carry out the actions of those that fire. ``message`` defaults to the one
        being handled; ``session`` (an open transaction) sends through the outbox."""
        self._maybe_reload()
        message = message or current_message.get()
        if message is None:
            raise ConfigurationError("evaluate() needs the Message outside a handler")
        facts = self._facts(event, message)
        rules = self._by_topic.get(message.topic, [])
        fired: list[tuple[CompiledRule, Fired]] = []
        errors: list[str] = []
        token = current_message.set(message)  # what rules publish is caused by it
        try:
            for rule in rules:
                outcome = self._check(rule, facts, message, errors)
                if outcome is not None:
                    fired.append((rule, await self._fire(rule, outcome, message, session)))
        finally:
            current_message.reset(token)
        return self._decided(message, len(rules), fired, errors)

    def _facts(self, event: Any, message: Message) -> dict[str, Any]:
        fields = facts_of(event)
        if not isinstance(fields, dict):
            fields = {"value": fields}
        facts = {k: v for k, v in fields.items() if k not in RESERVED}
        facts.update(event=fields, context=self.context, message={
            "id": message.id, "topic": message.topic, "key": message.key,
            "timestamp": message.timestamp, "attempt": message.attempt,
            "headers": dict(message.headers)})
        return facts

    def _check(self, rule: CompiledRule, facts: dict[str, Any], message: Message,
               errors: list[str]) -> dict[str, Any] | None:
        """The facts the actions see if ``rule`` fires, else None."""
        try:
            if not rule.when.matches(facts):
                return None
            if rule.by is None or rule.having is None:
                return facts
            key = rule.by.evaluate(facts)
            values = {n: e.evaluate(facts) for n, (_, e) in rule.aggregates.items()}
            window = self._windows.add(rule, key, message.timestamp, message.id, values)
            with_window = {**facts, "window": window}
            if not rule.having.matches(with_window):
                return None
            if rule.window is not None and rule.window.reset:
                self._windows.clear(rule, key)
            return with_window
        except RuleError as exc:
            errors.append(f"{rule.rule.name}: {exc}")
            log.warning("rule %s (%s) could not be evaluated on message %s: %s",
                        rule.rule.name, rule.rule.source, message.id, exc)
            return None

    async def _fire(self, rule: CompiledRule, facts: dict[str, Any], message: Message,
                    session: Any) -> Fired:
        done = [await self._effects.run(rule, a, facts, message, session)
                for a in rule.actions]
        return Fired(rule.rule.name, rule.rule.source, tuple(done), facts.get("window"))

    def _decided(self, message: Message, evaluated: int,
                 fired: list[tuple[CompiledRule, Fired]], errors: list[str]) -> Decision:
        actions = [a for rule, _ in fired for a in rule.rule.then]
        decision = Decision(
            message.id, message.topic, message.partition, message.offset, evaluated,
            tuple(f for _, f in fired),
            frozenset(n for a in actions if isinstance(a, Tag) for n in a.names),
            tuple(a.topic for a in actions if isinstance(a, Route)), tuple(errors))
        for _, f in fired:
            log.info("rule %s (%s) fired on %s[%d]@%d (message %s): %s", f.rule, f.source,
                     message.topic, message.partition, message.offset, message.id,
                     "; ".join(f.actions))
        self.decisions.append(decision)
        if self.on_decision is not None:
            self.on_decision(decision)
        return decision

    # -- wiring ------------------------------------------------------------------------

    def subscribe(self, app: App, topic: str, **options: Any) -> Callable[..., Any]:
        """Register a subscriber of ``topic`` on ``app`` that only evaluates the rules
        (its payload type is ``schemas[topic]``, else dict); ``options`` go to
        ``app.subscriber``. Returns the handler."""
        async def evaluate_rules(payload: Any, message: Message) -> None:
            await self.evaluate(payload, message)

        evaluate_rules.__annotations__ = {"payload": self.schemas.get(topic, dict),
                                          "message": Message, "return": None}
        evaluate_rules.__qualname__ = f"RuleEngine.subscribe[{topic}]"
        return app.subscriber(topic, **options)(evaluate_rules)

    def attach(self, app: App) -> RuleEngine:
        """Watch the rule files in the background while ``app`` runs, so a broken file
        is reported when it is saved, not when the next message comes."""
        app.on_startup(self.start)
        app.on_shutdown(self.stop)
        return self

    async def start(self) -> None:
        """Start watching the files (every ``reload_interval`` seconds)."""
        if self._task is None and self.reload_interval is not None:
            self._task = asyncio.create_task(self._watch(), name="tidings-rules-watch")

    async def stop(self) -> None:
        """Stop watching the files."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval or 1.0)
            self._maybe_reload()


def _stamp(path: Path) -> _Stamp | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _name(group: dict[str, CompiledRule]) -> str:
    return next(iter(group.values())).rule.name
