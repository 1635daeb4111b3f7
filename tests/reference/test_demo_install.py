"""`make demo` installs only what the shop needs: the `reference` extra, not the
development tools (`dev`), and the shop imports nothing outside that extra."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _closure(extra: str) -> set[str]:
    """Distribution names ``tidings[extra]`` installs (normalized), tidings included."""
    found: set[tuple[str, frozenset[str]]] = set()
    todo = [("tidings", frozenset({extra}))]
    while todo:
        name, extras = todo.pop()
        key = name.lower().replace("_", "-")
        if (key, extras) in found:
            continue
        found.add((key, extras))
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            wanted = any(req.marker is None or req.marker.evaluate({"extra": e})
                         for e in extras | {""})
            if wanted:
                todo.append((req.name, frozenset(req.extras)))
    return {k for k, _ in found}


def _imports() -> set[str]:
    names = set()
    for path in (ROOT / "reference").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"reference", "tidings"}


def test_the_shop_imports_only_what_the_reference_extra_installs() -> None:
    installed = _closure("reference")
    assert "playwright" not in installed and "mypy" not in installed
    owners = metadata.packages_distributions()
    for module in sorted(_imports()):
        dists = {d.lower().replace("_", "-") for d in owners.get(module, [module])}
        assert dists & installed, f"reference imports {module} ({dists}), not in [reference]"


def test_make_demo_installs_the_reference_extra_only() -> None:
    plan = subprocess.run(["make", "-n", "-B", "demo"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True).stdout
    assert "-e '.[reference]'" in plan and ".[dev]" not in plan, plan
