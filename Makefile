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

test: $(STAMP) test-deps
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Third-party servers and clients the drop-in tests run against (nginx, curl).
test-deps:
	@if command -v nginx >/dev/null || test -x /usr/sbin/nginx; then :; else \
	  apt-get update && apt-get install -y --no-install-recommends nginx; fi
	@command -v curl >/dev/null || apt-get install -y --no-install-recommends curl

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
