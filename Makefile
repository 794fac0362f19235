# make demo  - render examples/minimal_request.json through the real queue (embedded defaults)
# make test  - the whole test suite on PostgreSQL + Redis
# make up    - web on 127.0.0.1:$(PORT) and a GPU worker; Ctrl-C stops both
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
export PYTHONUNBUFFERED := 1
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_PROGRESS_BARS := 1

.PHONY: setup demo test up migrate services

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
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

up: migrate
	$(PY) manage.py collectstatic --noinput -v0
	trap 'kill 0' INT TERM EXIT; \
	$(PY) -m celery -A workers.celery_app worker -Q gpu,celery --pool solo --concurrency 1 -n gpu@%h \
		--beat --schedule var/celerybeat-schedule --loglevel INFO & \
	$(PY) manage.py runserver 127.0.0.1:$(PORT) --noreload & \
	wait
