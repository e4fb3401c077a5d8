# `make quickstart` and `make test` set up .venv on first use (scripts/setup.sh).
VENV ?= .venv
STAMP := $(VENV)/.llmlab-installed

.PHONY: setup quickstart test lint coverage

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

# Line coverage of platform/ over the whole suite (slower than `make test`: every process is traced).
# Ray's processes may still be writing their files when pytest ends, hence the pause before combining.
coverage: setup
	rm -rf .coverage-data && mkdir -p .coverage-data
	LLMLAB_COVERAGE_DIR=$(CURDIR)/.coverage-data $(VENV)/bin/python -m pytest -q --cov --cov-report= || true
	sleep 15
	LLMLAB_COVERAGE_DIR=$(CURDIR)/.coverage-data $(VENV)/bin/python -m coverage combine --append -q
	LLMLAB_COVERAGE_DIR=$(CURDIR)/.coverage-data $(VENV)/bin/python -m coverage report | tail -1
