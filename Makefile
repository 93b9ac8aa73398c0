# Everything the project needs is installed from here: a fresh machine with
# Python 3.11 and make is enough for `make test` and `make fleet`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test test-deps fleet lint venv bench-deps bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when pyproject.toml changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# PostgreSQL's server binaries for tests/test_batch_postgres.py, which starts its own
# throwaway server (Debian keeps initdb and pg_ctl in /usr/lib/postgresql/N/bin). The
# package's own post-install step (a system cluster) may fail in a container; only the
# binaries are needed, so that is tolerated and their presence checked instead.
test-deps:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then \
	  echo "postgresql present"; \
	else \
	  (apt-get update && apt-get install -y --no-install-recommends postgresql) || true; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check katyusha nonna sim_backend tests benchmarks

fleet: $(STAMP)
	$(BIN)/katyusha fleet up $(FLEET_ARGS)

# Peers for the benchmarks (nginx, HAProxy, wrk, hey) come from Debian's packages.
bench-deps: $(STAMP)
	@if command -v nginx >/dev/null && command -v haproxy >/dev/null && command -v wrk >/dev/null && command -v hey >/dev/null; then \
	  echo "bench peers present"; \
	else \
	  apt-get update && apt-get install -y --no-install-recommends nginx haproxy wrk hey; \
	fi

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
