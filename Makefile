# make demo  - render examples/minimal_request.json through the real queue (embedded defaults)
# make test  - the whole test suite on PostgreSQL + Redis
# make test-fast - pipeline and web tests on SQLite, no processes started (the edit-test loop)
# make up    - web on 127.0.0.1:$(PORT), a GPU worker and beat (scripts/up.sh); Ctrl-C stops all
# make lint  - ruff check and ruff format --check (CI runs it before the tests)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
export PYTHONUNBUFFERED := 1
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_PROGRESS_BARS := 1

.PHONY: setup demo test test-fast up migrate services lint

$(VENV)/.installed: requirements-web.txt requirements.txt requirements-dev.txt client/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q -e client  # the `wanq` command line (client/)
	touch $@

setup: $(VENV)/.installed

migrate: setup
	$(PY) manage.py migrate --noinput -v0

demo: migrate
	$(PY) manage.py demo

services:
	scripts/services.sh
	scripts/browser.sh

test: setup services
	DATABASE_URL=$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/renderqueue} \
	REDIS_URL=$${TEST_REDIS_URL:-redis://127.0.0.1:6379/15} \
	VAR_DIR=$(CURDIR)/var/test \
	$(PY) -m pytest

# The edit-test loop: pipeline and web tests on SQLite, no worker, server or browser processes.
test-fast: setup
	env -u DATABASE_URL -u REDIS_URL VAR_DIR=$(CURDIR)/var/fast $(PY) -m pytest tests/pipeline tests/webapp \
		-m "not processes and not gpu and not fuzz" -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

up: migrate
	$(PY) manage.py collectstatic --noinput -v0
	PY=$(PY) PORT=$(PORT) scripts/up.sh
