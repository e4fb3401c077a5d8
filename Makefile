# `make quickstart` and `make test` set up .venv on first use (scripts/setup.sh).
VENV ?= .venv
STAMP := $(VENV)/.llmlab-installed

.PHONY: setup quickstart test lint

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	VENV=$(VENV) scripts/setup.sh
	touch $@

quickstart: setup
	$(VENV)/bin/llmlab run experiments/quickstart.yaml

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q --durations=15

lint: setup
	$(VENV)/bin/ruff check .
