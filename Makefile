# Two commands on a fresh machine: `make demo` and `make test`. Both set everything up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup system-deps demo demo-check test lint bench bench-kafka clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -U pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

# Debian's chromium for the browser test (Playwright's own download fails here).
system-deps:
	command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q \
	  --no-install-recommends -o DPkg::Lock::Timeout=300 chromium; }

# The shop: every service its own process under a supervisor; Ctrl-C stops all.
demo: setup
	$(BIN)/python -m reference.supervisor --fresh

# The same, scripted: runs the article's scenario and three orders, then exits.
demo-check: setup
	$(BIN)/python -m reference.supervisor --once --fresh

lint: setup
	$(BIN)/ruff check src tests benchmarks examples reference
	$(BIN)/mypy

test: setup system-deps lint
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_embedded.py

# Kafka (a tansu it starts) against the raw client and FastStream; FastStream goes in a
# throwaway venv, never in the project's.
FS_VENV := /tmp/tidings-faststream-venv
bench-kafka: setup
	test -x $(FS_VENV)/bin/python || { $(PYTHON) -m venv $(FS_VENV) && \
	  $(FS_VENV)/bin/pip install -q 'faststream[kafka]' pydantic; }
	$(BIN)/python benchmarks/bench_kafka.py --faststream-python $(FS_VENV)/bin/python

clean:
	rm -rf $(VENV) .tidings .reference .artifacts .pytest_cache .mypy_cache .ruff_cache
