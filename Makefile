# Convoy: `make run` serves the dashboard, `make test` runs everything CI runs.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
# The production-shape test run uses these servers; each run makes its own database and
# Redis key prefix, so runs never see each other's data.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0
PYTEST_ARGS ?=

RUN_PACKAGES := runsc bubblewrap libseccomp2 git mmdebstrap skopeo umoci
TEST_PACKAGES := $(RUN_PACKAGES) chromium docker-registry nodejs
# axe-core for the browser tests' accessibility checks, pinned by tests/browser/package-lock.json.
AXE := tests/browser/node_modules/axe-core/axe.min.js

.PHONY: run test test-fast test-live venv system-deps system-deps-test browser-deps host-tune lint fmt migrate seed worker bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

# Installs the Debian packages Convoy needs when they are missing (apt-get, as root or via sudo).
system-deps:
	@bash scripts/system-deps.sh $(RUN_PACKAGES)

system-deps-test:
	@bash scripts/system-deps.sh $(TEST_PACKAGES)

$(AXE): tests/browser/package.json tests/browser/package-lock.json
	@command -v npm >/dev/null || bash scripts/system-deps.sh npm  # Debian's nodejs comes without it
	npm ci --prefix tests/browser --no-audit --no-fund
	touch $@

browser-deps: system-deps-test $(AXE)

# Optional: faster sandbox starts (see scripts/host-tune.sh). Not run by
# `make run` or `make test`.
host-tune:
	@bash scripts/host-tune.sh

migrate: venv
	$(BIN)/python manage.py migrate --noinput

seed: migrate
	$(BIN)/python manage.py demo_seed

run: venv system-deps seed
	@if [ -n "$$REDIS_URL" ]; then \
	  echo "Production shape: starting a Celery worker beside the web process"; \
	  $(BIN)/celery -A config worker --beat --loglevel INFO -c 4 & \
	  worker=$$!; trap "kill $$worker 2>/dev/null" EXIT; \
	  $(BIN)/python manage.py serve --port $(PORT); \
	else \
	  $(BIN)/python manage.py serve --port $(PORT); \
	fi

worker: venv
	$(BIN)/celery -A config worker --loglevel INFO

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

fmt: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: venv system-deps-test browser-deps lint
	@echo "=== pytest, production shape (PostgreSQL + Redis) ==="
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(BIN)/pytest $(PYTEST_ARGS)
	@echo "=== pytest, embedded shape (SQLite, in-process worker, in-memory channel layer) ==="
	env -u DATABASE_URL -u REDIS_URL $(BIN)/pytest $(PYTEST_ARGS)

# The inner loop: lint and the tests not marked slow, in the production shape only.
test-fast: venv lint
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

bench: venv
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info

# The cloud backends against their real providers; each provider's test runs only with its
# credentials in the environment and is reported as skipped (with the reason) otherwise.
test-live: venv
	env -u DATABASE_URL -u REDIS_URL $(BIN)/pytest -rs \
	  tests/sandboxes/test_modal_live.py tests/sandboxes/test_e2b_live.py tests/sandboxes/test_daytona_live.py \
	  tests/sandboxes/test_cloud_live_demo.py
