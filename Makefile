# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' && echo $$p && break; done)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test bench soak lint migrate clean

SOAK_MINUTES ?= 5

$(BIN)/.installed: pyproject.toml clients/python/pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11+ is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]" -e "./clients/python[tokens]"
	@touch $@

run: $(BIN)/.installed
	$(BIN)/costwarden run $(if $(REPLICAS),--replicas $(REPLICAS))

test: $(BIN)/.installed
	$(BIN)/pytest

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
	rm -rf $(VENV) .run .pytest_cache
