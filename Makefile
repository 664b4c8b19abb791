# One command to start the service, one to run the tests; both set up what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install serve test lint worker redis chromium

$(VENV)/.installed: pyproject.toml client/pyproject.toml server/pyproject.toml
	python3 -m venv $(VENV)
	# torch and torchvision first, pinned: on these machines pip takes them from local disk.
	$(VENV)/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1
	# The core (.), the client with the contract and the `cnnviz` command (./client), then the
	# service and its workers (./server), all three from this checkout.
	$(VENV)/bin/pip install --quiet -e '.[dev]' -e ./client -e './server[server]'
	touch $@

install: $(VENV)/.installed

serve: install
	$(VENV)/bin/uvicorn service.main:app --host $(HOST) --port $(PORT)

test: install redis chromium
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

worker: install
	$(VENV)/bin/celery -A workers.app worker -Q gpu --pool prefork --concurrency 1 --loglevel INFO

redis:
	scripts/ensure-redis

chromium:
	scripts/ensure-chromium
