# Two commands: `make run` (start the embedded stack) and `make test` (set up and run every check).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: run test lint bench mutate clean deploy-tools

# tests/test_web.py drives Debian's chromium (Playwright never downloads a browser): installed when missing
CHROMIUM ?= /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u 2>/dev/null)),,sudo)

$(VENV)/.run-deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -e '.[cpu-engine]'
	touch $@

# the tests also cover speaker embeddings: the `quality` extra, plus resemblyzer (its weights) without its deps
$(VENV)/.dev-deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -e '.[cpu-engine,dev,quality]'
	$(PIP) install -q --no-deps 'resemblyzer==0.1.4'
	touch $@ $(VENV)/.run-deps

$(VENV)/.mutate-deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -e '.[cpu-engine,dev,quality,mutate]'
	$(PIP) install -q --no-deps 'resemblyzer==0.1.4'
	touch $@ $(VENV)/.dev-deps $(VENV)/.run-deps

run: $(VENV)/.run-deps
	$(BIN)/sovits-gateway stack

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check gateway tests bench tools
	$(BIN)/mypy gateway

$(CHROMIUM):
	@command -v apt-get >/dev/null 2>&1 || { echo >&2 "make test: $(CHROMIUM) is missing and apt-get is not \
	available; install Chromium there (tests/test_web.py drives it) or point CHROMIUM= at one"; exit 1; }
	$(SUDO) apt-get update -q
	$(SUDO) apt-get install -y -q chromium

# tests/test_deploy*.py: Debian's docker.io (the test starts dockerd when none is running), docker-compose 1.29,
# debootstrap (deploy/base-image.sh makes the image's base locally: no registry is needed) and systemd-analyze.
# Installed when missing, like chromium; the docker test is skipped (with the reason) where dockerd cannot start.
DEPLOY_TOOLS := dockerd docker-compose debootstrap systemd-analyze
deploy-tools:
	@missing=$$(for tool in $(DEPLOY_TOOLS); do PATH="$$PATH:/usr/sbin:/sbin" command -v $$tool >/dev/null || echo $$tool; done); \
	if [ -n "$$missing" ]; then \
	  command -v apt-get >/dev/null 2>&1 || { echo >&2 "make test: missing $$missing and no apt-get: install \
	docker.io, docker-compose, debootstrap and systemd there (tests/test_deploy*.py use them)"; exit 1; }; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q docker.io docker-compose debootstrap systemd; \
	fi

# tests/test_scale*.py and the Redis-backed tests start their own Debian redis-server: installed when missing
REDIS_SERVER ?= /usr/bin/redis-server
$(REDIS_SERVER):
	@command -v apt-get >/dev/null 2>&1 || { echo >&2 "make test: $(REDIS_SERVER) is missing and apt-get is not \
	available; install redis-server there (the scale-out tests start it)"; exit 1; }
	$(SUDO) apt-get update -q
	$(SUDO) apt-get install -y -q redis-server

test: lint $(CHROMIUM) $(REDIS_SERVER) deploy-tools
	CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest

bench: $(VENV)/.dev-deps
	$(BIN)/python -m bench.overhead
	$(BIN)/python -m bench.ttfb
	$(BIN)/python -m bench.load
	$(BIN)/python -m bench.recovery
	$(BIN)/python -m bench.convert_cost
	$(BIN)/python -m bench.cpu_engine_rtf
	$(BIN)/python -m bench.render_cost
	$(BIN)/python -m bench.dub

# Mutation testing of the pool's health/selection logic, the voice store and reference intake against their
# fast unit tests (config: [tool.mutmut] in pyproject.toml). Not part of `make test`; ~10 min on 2 cores.
mutate: $(VENV)/.mutate-deps
	$(BIN)/python tools/mutate.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache mutants mutants-survivors.txt mutants-run.log
