# trading-ops: `make run` sets up and starts the local stack, `make test` sets up and runs every check.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= trading-ops.yaml
SYSTEM_BINARIES := prometheus promtool prometheus-alertmanager amtool docker-compose
DEBIAN_PACKAGES := prometheus prometheus-alertmanager docker-compose

.PHONY: setup system-deps run test lint typecheck bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The freqtrade extra: a real freqtrade (and its TA-Lib wheel) for the freqtrade sidecar's tests.
	$(PY) -m pip install -q -e '.[test,freqtrade]'
	touch $(STAMP)

# Installs the Debian packages that provide the real Prometheus and Alertmanager when a binary is missing.
system-deps:
	@missing=""; for b in $(SYSTEM_BINARIES); do command -v $$b >/dev/null 2>&1 || missing="$$missing $$b"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	echo "missing binaries:$$missing"; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES); \
	else \
		echo "install them with: sudo apt-get install $(DEBIAN_PACKAGES)"; \
		echo "(or put prometheus, promtool, prometheus-alertmanager/alertmanager, amtool and docker-compose on PATH)"; \
		exit 1; \
	fi

var/secrets/control-token:
	@mkdir -p var/secrets && chmod 700 var/secrets
	@$(PYTHON) -c "import secrets; print(secrets.token_urlsafe(32))" > $@ && chmod 600 $@

var/secrets/reconciler-token:
	@mkdir -p var/secrets && chmod 700 var/secrets
	@$(PYTHON) -c "import secrets; print(secrets.token_urlsafe(32))" > $@ && chmod 600 $@

$(CONFIG):
	cp trading-ops.example.yaml $(CONFIG)

# The local stack: paper bot (--chaos), reconciler, Prometheus and Alertmanager; Ctrl-C stops it.
# `make run UP_ARGS="--profile standard --base-port 19100"` passes options to `trading-ops up`.
run: $(STAMP) var/secrets/control-token var/secrets/reconciler-token $(CONFIG)
	-@$(MAKE) --no-print-directory system-deps
	$(VENV)/bin/trading-ops --config $(CONFIG) db upgrade
	exec $(VENV)/bin/trading-ops --config $(CONFIG) up $(UP_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check trading_ops tests benchmarks
	$(VENV)/bin/ruff format --check trading_ops tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: $(STAMP) system-deps
	$(VENV)/bin/ruff check trading_ops tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) benchmarks/bench_exporter.py
	$(PY) benchmarks/bench_intake.py
	$(PY) benchmarks/bench_recovery.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache
