# The two commands a new user runs: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install demo test test-fast lint format stack-up stack-down bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# constraints.txt is the lock: every transitive version is pinned (see README, "Dependencies").
$(INSTALLED): $(PY) pyproject.toml constraints.txt
	$(PY) -m pip install -q --disable-pip-version-check --upgrade "pip>=24"
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(INSTALLED)

install: $(INSTALLED)

DEMO_CONFIG ?= deployments/demo.yaml

demo: install
	HOUSEGAN_CONFIG=$(DEMO_CONFIG) $(VENV)/bin/housegan stack up
	eval "$$(HOUSEGAN_CONFIG=$(DEMO_CONFIG) $(VENV)/bin/housegan stack env)" && \
		HOUSEGAN_CONFIG=$(DEMO_CONFIG) PREFECT_SERVER_ANALYTICS_ENABLED=false \
		PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW=ignore $(PY) -m flows.demo

test: install
	$(VENV)/bin/pytest

# Unit tests only: no server is started (tests/unit/conftest.py refuses a test that asks for one).
test-fast: install
	$(VENV)/bin/pytest tests/unit

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

stack-up: install
	$(VENV)/bin/housegan stack up

stack-down: install
	$(VENV)/bin/housegan stack down

bench: install
	$(PY) benchmarks/bench_ingest.py

clean:
	-$(VENV)/bin/housegan stack down
	rm -rf .housegan .pytest_cache .ruff_cache
