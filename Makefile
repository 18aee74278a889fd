# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 \
	&& echo $$p && break; done)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test check test-unit test-adapter test-service test-system prometheus chromium postgres bench soak \
	lint migrate clean

SOAK_MINUTES ?= 5
# Test processes for the tiers with servers (docs/testing.md): their tests mostly wait on servers, so a
# few run well side by side even on 2 cores. Each has its own servers, ports and databases.
TEST_WORKERS ?= 3
PYTEST := $(BIN)/pytest --durations=10
PARALLEL := -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

# $(call apt_install,package,why): one line says what is installed and why.
apt_install = { echo "installing $(1) ($(2))"; apt-get install -y -qq $(1) >/dev/null 2>&1 \
	|| { apt-get update -qq >/dev/null && apt-get install -y -qq $(1) >/dev/null; }; }

$(BIN)/.installed: pyproject.toml clients/python/pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]" -e "./clients/python[tokens]"
	@touch $@

run: $(BIN)/.installed
	$(BIN)/costwarden run $(if $(REPLICAS),--replicas $(REPLICAS))

# Every tier: what CI runs after `make lint`.
test: $(BIN)/.installed prometheus chromium postgres
	$(PYTEST) $(PARALLEL)

# The inner loop: lint, then the tests that need no server.
check: lint test-unit

test-unit: $(BIN)/.installed prometheus
	$(PYTEST) -m unit

test-adapter test-service: test-%: $(BIN)/.installed postgres
	$(PYTEST) $(PARALLEL) -m $*

test-system: $(BIN)/.installed prometheus chromium postgres
	$(PYTEST) $(PARALLEL) -m system

# What the tests need from the machine, installed or started only when missing.
prometheus:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null \
		|| $(call apt_install,prometheus,promtool checks the alert rules; the system tests scrape the services)

chromium:
	@command -v chromium >/dev/null \
		|| $(call apt_install,chromium,the console's tests drive it headless; no browser is downloaded)

# The tests make their databases on the machine's PostgreSQL (DATABASE_URL); every other server they
# start themselves, on free ports.
postgres:
	@pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null || { \
		echo "starting PostgreSQL (the tests make their databases on it)"; \
		pg_ctlcluster --skip-systemctl-redirect "$$(ls /etc/postgresql | head -1)" main start; \
		for _ in $$(seq 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done; }

bench: $(BIN)/.installed
	@command -v wrk >/dev/null || { echo "installing wrk (the load generator)"; apt-get install -y -qq wrk >/dev/null; }
	@command -v valgrind >/dev/null || { echo "installing valgrind (instructions per call)"; apt-get install -y -qq valgrind >/dev/null; }
	$(BIN)/python -m bench

soak: $(BIN)/.installed
	SOAK_MINUTES=$(SOAK_MINUTES) $(BIN)/python -m soak

migrate: $(BIN)/.installed
	$(BIN)/costwarden migrate

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
