# Everything the project needs is installed from here: a fresh machine with
# Python 3.11 and make is enough for `make test` and `make fleet`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: compile test test-uvicorn test-deps system-deps fleet lint venv bench-deps bench clean compose-file compose-deps wheelhouse base-image prometheus-image compose-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when pyproject.toml changes.
$(STAMP): pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,bench,containers]'
	touch $(STAMP)

venv: $(STAMP)

# The request path compiled with Cython, in place (optional, docs/performance.md:
# compiled as they are, these modules run slower than CPython 3.11's own
# interpreter). KATYUSHA_PURE_PYTHON=1 runs the .py files anyway; an edited .py
# runs as Python, with a warning, until the next `make compile`.
compile: $(STAMP)
	KATYUSHA_COMPILE=$${KATYUSHA_COMPILE:-1} $(BIN)/python setup.py -q build_ext --inplace

test: $(STAMP) test-deps system-deps
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The data-path tests again with katyusha's ASGI app on uvicorn's own protocol
# (`http-server: uvicorn`): the lean server is one implementation of the same
# behaviour. What only the lean server does is asserted only under it
# (tests/procs.py, LEAN_SERVER). A step of .ci/run, after `make test`.
UVICORN_TESTS := tests/test_data_path_fast.py tests/test_datapath.py tests/test_katyusha_proxy.py \
	tests/test_retries_e2e.py tests/test_hedge_e2e.py tests/test_health_e2e.py tests/test_unreachable_app.py
test-uvicorn: $(STAMP)
	KATYUSHA_HTTP_SERVER=uvicorn $(BIN)/python -m pytest -q $(PYTEST_ARGS) $(UVICORN_TESTS)

# What the tests need from Debian: PostgreSQL's server binaries for
# tests/test_batch_postgres.py (which starts its own throwaway server; the
# package's post-install system cluster may fail in a container, so only the
# binaries are checked), and the third-party servers and clients the drop-in
# tests run against (nginx, curl).
test-deps:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then \
	  echo "postgresql present"; \
	else \
	  (apt-get update && apt-get install -y --no-install-recommends postgresql) || true; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null; \
	fi
	@if command -v nginx >/dev/null || test -x /usr/sbin/nginx; then :; else \
	  apt-get update && apt-get install -y --no-install-recommends nginx; fi
	@command -v curl >/dev/null || apt-get install -y --no-install-recommends curl

# What the dashboard's browser tests and `katyusha fleet up --prometheus` need from
# Debian: chromium (driven by Playwright from the `test` extra, never a downloaded
# browser) and Prometheus's server and promtool. apt-get update only when the
# install fails (an old or missing package list).
SYSTEM_DEBS := chromium prometheus
system-deps:
	@if command -v chromium >/dev/null && command -v prometheus >/dev/null && command -v promtool >/dev/null; then \
	  echo "chromium, prometheus present"; else \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends $(SYSTEM_DEBS) >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends $(SYSTEM_DEBS) >/dev/null; }; fi

lint: $(STAMP)
	$(BIN)/ruff check katyusha nonna sim_backend tests benchmarks

fleet: $(STAMP)
	$(BIN)/katyusha fleet up $(FLEET_ARGS)

# Peers for the benchmarks (nginx, HAProxy, wrk, hey) come from Debian's packages;
# strace for benchmarks.live_cost's syscalls a request. SimFaaS (benchmarks.sim_scale's
# peer) is in the `bench` extra, installed with the venv ($(STAMP)).
bench-deps: $(STAMP)
	@if command -v nginx >/dev/null && command -v haproxy >/dev/null && command -v wrk >/dev/null && command -v hey >/dev/null && command -v strace >/dev/null; then \
	  echo "bench peers present"; \
	else \
	  apt-get update && apt-get install -y --no-install-recommends nginx haproxy wrk hey strace; \
	fi

# The fleet in containers (docs/containers.md). `compose-test` runs it with podman
# and podman-compose (installed here: Debian's podman, runc and debootstrap; the
# `containers` extra), on a local base image made once with debootstrap.
COMPOSE_DEBS       := podman runc debootstrap netavark aardvark-dns iptables
COMPOSE_BASE_IMAGE ?= localhost/katyusha-base:bookworm
PROMETHEUS_IMAGE   ?= localhost/katyusha-prometheus:local
COMPOSE_ENV        := CONTAINERS_CONF=$(CURDIR)/deploy/containers/containers.conf
WHEELHOUSE         := build/wheelhouse/.built
SOURCES            := $(shell find katyusha nonna sim_backend -name '*.py' -o -name '*.yaml')

compose-file: $(STAMP)
	$(BIN)/katyusha fleet compose

compose-deps:
	@if dpkg -s $(COMPOSE_DEBS) >/dev/null 2>&1; then echo "podman, runc, debootstrap present"; else \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends $(COMPOSE_DEBS) >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends $(COMPOSE_DEBS) >/dev/null; }; fi

wheelhouse: $(WHEELHOUSE)

$(WHEELHOUSE): pyproject.toml $(SOURCES) deploy/containers/wheelhouse.sh | $(STAMP)
	deploy/containers/wheelhouse.sh $(BIN)/python
	touch $@

base-image: compose-deps
	$(COMPOSE_ENV) deploy/containers/base-image.sh $(COMPOSE_BASE_IMAGE)

prometheus-image: base-image
	$(COMPOSE_ENV) deploy/containers/prometheus-image.sh $(COMPOSE_BASE_IMAGE) $(PROMETHEUS_IMAGE)

compose-test: $(STAMP) prometheus-image wheelhouse
	$(COMPOSE_ENV) BASE_IMAGE=$(COMPOSE_BASE_IMAGE) PROMETHEUS_IMAGE=$(PROMETHEUS_IMAGE) KATYUSHA_COMPOSE_TEST=1 \
	  $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/test_compose_file.py tests/test_compose_e2e.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
