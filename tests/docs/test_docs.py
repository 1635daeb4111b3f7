"""The documentation: the site builds with --strict (a broken link, anchor or API
reference fails), and every Python snippet of the README and the docs runs: as it
stands, or as part of an example program under examples/ that a test here runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kafka_broker import running_tansu
from processes import service_process

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
INCLUDE = re.compile(r'^--8<-- "([^"]+)"$')


def _snippets() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{page.relative_to(ROOT)}:{line}", match.group(1)))
    return found


SNIPPETS = _snippets()
EXAMPLES = {p: p.read_text() for p in (ROOT / "examples").rglob("*.py")}

KAFKA_EXAMPLE = "examples/guides/kafka_exactly_once.py"

#: Example programs and how a test here runs them (see test_example_runs).
RUN = {
    "examples/tutorial/main.py": "accounts after a duplicate delivery: 3",
    "examples/logging_setup.py": '"level": "ERROR", "logger": "tidings"',
    "examples/demo.py": "3/3 events received",
    "examples/guides/consistency.py": "consistency guide: all ran",
    "examples/guides/eventsourcing.py": "event sourcing guide: all ran",
    "examples/guides/rules.py": "rules guide: all ran",
}


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT),
            "TIDINGS_BROKER": f"sqlite:///{tmp_path}/bus.db", **extra}


def test_site_builds_strict(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    api = (tmp_path / "api" / "tidings" / "index.html").read_text()
    assert "RetryPolicy" in api and "dead_letters" in api
    assert "assert_published" in (tmp_path / "api" / "testing" / "index.html").read_text()
    assert ":class:" not in api  # Sphinx roles are rendered as code (docs/griffe_roles.py)
    # no page asks a font or script host at run time (the site works offline)
    for page in tmp_path.rglob("*.html"):
        assert "fonts.googleapis.com" not in page.read_text(), page


@pytest.mark.parametrize(("where", "code"), SNIPPETS, ids=[w for w, _ in SNIPPETS])
def test_snippet_runs(where: str, code: str, tmp_path: Path) -> None:
    included = [INCLUDE.match(line) for line in code.strip().splitlines()]
    if all(included):
        for match in included:
            assert match is not None
            assert (ROOT / match.group(1)).is_file(), f"{where}: no {match.group(1)}"
        return  # the page shows files of examples/: they are run by test_example_runs
    homes = [p for p, text in EXAMPLES.items() if code in text]
    if homes:  # an excerpt of an example program: that program must be one we run
        names = {str(p.relative_to(ROOT)) for p in homes}
        assert names & (set(RUN) | set(QUICKSTART) | {KAFKA_EXAMPLE,
                                                       "examples/testing/billing.py"}), \
            f"{where} is in {names}, which no test runs"
        return
    script = tmp_path / "snippet.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env=_env(tmp_path))
    assert out.returncode == 0, f"{where} does not run:\n{code}\n{out.stderr[-3000:]}"


@pytest.mark.parametrize(("path", "expected"), sorted(RUN.items()))
def test_example_runs(path: str, expected: str, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / path)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env=_env(tmp_path))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert expected in out.stdout + out.stderr


def test_the_kafka_example_runs(tmp_path: Path) -> None:
    with running_tansu() as kafka_url:  # its own: the example's topic names are plain
        out = subprocess.run([sys.executable, str(ROOT / KAFKA_EXAMPLE)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120,
                             env=_env(tmp_path, TIDINGS_BROKER=kafka_url))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "invoice: {'order_id': 'o-1', 'amount': 30}" in out.stdout


def test_the_testing_example_passes(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "--rootdir", str(tmp_path), str(ROOT / "examples" / "testing")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=_env(tmp_path))
    assert out.returncode == 0, out.stdout[-3000:]
    assert "3 passed" in out.stdout


QUICKSTART = ["examples/quickstart/notifications.py", "examples/quickstart/publisher.py"]


def test_the_readme_shows_the_quickstart_files_as_they_are() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = [code for where, code in SNIPPETS if where.startswith("README.md")]
    assert blocks == [(ROOT / p).read_text() for p in QUICKSTART]
    assert "pip install 'tidings[kafka]'" not in readme  # not on an index


def test_the_quickstart_runs_in_two_processes(tmp_path: Path) -> None:
    env = _env(tmp_path)
    with service_process([sys.executable, str(ROOT / QUICKSTART[0])], tmp_path, env) as (
            service, output):
        line = output.readline()
        assert "running on" in line, line
        publisher = subprocess.run([sys.executable, str(ROOT / QUICKSTART[1])], cwd=tmp_path,
                                   env=env, capture_output=True, text=True, timeout=60)
        assert publisher.returncode == 0, publisher.stderr
        assert publisher.stdout.strip() == "{'hello': 'Bob'}"
        seen = []
        while not any("user 2 (Bob)" in s for s in seen):  # Bob's was delayed by 2 s
            seen.append(output.readline())
        assert "Received registration event for user 1 (Alice)\n" in seen
        service.terminate()
        assert service.wait(30) == 0


def test_the_readme_install_builds_a_wheel(tmp_path: Path) -> None:
    # From a copy of the checkout: building in place would leave build/ in the tree.
    source = tmp_path / "checkout"
    shutil.copytree(ROOT / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                          str(tmp_path / "dist"), str(source)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    wheels = [p.name for p in (tmp_path / "dist").glob("*.whl")]
    assert wheels == ["tidings-0.1.0-py3-none-any.whl"]


def test_the_rules_guide_runs_the_rule_file_it_shows() -> None:
    guide = (ROOT / "docs" / "rules.md").read_text()
    shown = re.search(r"^```yaml\n(# rules/fraud.yaml\n.*?)^```", guide, re.S | re.M)
    assert shown is not None
    assert shown.group(1) in (ROOT / "examples" / "guides" / "rules.py").read_text()
