# Two commands on a fresh machine: `make demo` and `make test`. Both set everything up:
# the demo only what the shop needs (the `reference` extra), the tests everything else
# too (the `dev` extra: linters, the servers and browser driver the tests start, docs).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install -q --disable-pip-version-check
SUM    := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
STAMP  := $(VENV)/.installed-dev-$(SUM)
DEMO_STAMP := $(VENV)/.installed-reference-$(SUM)

.PHONY: setup setup-demo system-deps demo demo-check test lint docs bench bench-kafka bench-amqp bench-mqtt bench-saga clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) -U pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(PIP) -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP) $(DEMO_STAMP)

# The dev install includes the reference extra: after `make setup` this is a no-op.
$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) -e '.[reference]'
	touch $(DEMO_STAMP)

setup: $(STAMP)

setup-demo: $(DEMO_STAMP)

# Debian's chromium for the browser test (Playwright's own download fails here), and
# RabbitMQ and mosquitto for the amqp:// and mqtt:// backends' tests (they start private
# brokers; the Debian services the packages may start are stopped).
system-deps:
	command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q \
	  --no-install-recommends -o DPkg::Lock::Timeout=300 chromium; }
	test -x /usr/sbin/mosquitto || { { apt-get update -q && apt-get install -y -q \
	  --no-install-recommends -o DPkg::Lock::Timeout=300 mosquitto; } && \
	  { service mosquitto stop >/dev/null 2>&1 || true; } && \
	  { update-rc.d mosquitto disable >/dev/null 2>&1 || true; }; }
	test -x /usr/lib/rabbitmq/bin/rabbitmq-server || { { apt-get update -q && \
	  apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 \
	  rabbitmq-server; } && { service rabbitmq-server stop >/dev/null 2>&1 || true; }; }

# The shop: every service its own process under a supervisor; Ctrl-C stops all.
demo: setup-demo
	$(BIN)/python -m reference.supervisor --fresh

# The same, scripted: runs the article's scenario and three orders, then exits.
demo-check: setup-demo
	$(BIN)/python -m reference.supervisor --once --fresh

lint: setup
	$(BIN)/ruff check src tests benchmarks examples reference docs
	$(BIN)/mypy

# Two workers: the suite mostly waits on brokers and service processes, so two of them
# halve its time even on two cores (TEST_WORKERS=0 runs it in one process).
TEST_WORKERS ?= 2
test: setup system-deps lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# The documentation site (docs/, mkdocs.yml) into .site/; `make test` builds it too,
# with --strict, in tests/docs/.
docs: setup
	$(BIN)/mkdocs build --strict --site-dir .site

bench: setup
	$(BIN)/python benchmarks/bench_embedded.py

# Kafka (a tansu it starts) against the raw client and FastStream; FastStream goes in a
# throwaway venv, never in the project's.
FS_VENV := /tmp/tidings-faststream-venv
bench-kafka: setup
	test -x $(FS_VENV)/bin/python || { $(PYTHON) -m venv $(FS_VENV) && \
	  $(FS_VENV)/bin/pip install -q 'faststream[kafka]' pydantic; }
	$(BIN)/python benchmarks/bench_kafka.py --faststream-python $(FS_VENV)/bin/python

# RabbitMQ (a private node it starts) against the raw aio-pika client and FastStream,
# which goes in a throwaway venv, never in the project's.
FS_RABBIT_VENV := /tmp/tidings-faststream-rabbit-venv
bench-amqp: setup system-deps
	test -x $(FS_RABBIT_VENV)/bin/python || { $(PYTHON) -m venv $(FS_RABBIT_VENV) && \
	  $(FS_RABBIT_VENV)/bin/pip install -q 'faststream[rabbit]' pydantic; }
	$(BIN)/python benchmarks/bench_amqp.py --faststream-python $(FS_RABBIT_VENV)/bin/python

# MQTT (a mosquitto it starts) against the raw paho-mqtt client.
bench-mqtt: setup system-deps
	$(BIN)/python benchmarks/bench_mqtt.py

# Sagas against DBOS Transact, which goes in a throwaway venv, never in the project's.
DBOS_VENV := /tmp/tidings-dbos-venv
bench-saga: setup
	test -x $(DBOS_VENV)/bin/python || { $(PYTHON) -m venv $(DBOS_VENV) && \
	  $(DBOS_VENV)/bin/pip install -q dbos; }
	$(BIN)/python benchmarks/bench_saga.py --postgres --dbos-python $(DBOS_VENV)/bin/python

clean:
	rm -rf $(VENV) .site .tidings .reference .artifacts .pytest_cache .mypy_cache .ruff_cache
