# The two commands a new user runs: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install system-deps demo test test-fast lint format stack-up stack-down bench clean

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

# Debian packages the suite drives: Chromium (the app's browser test, through Playwright; never
# `playwright install`, which downloads browsers) and the PostgreSQL server (the stack's
# --db postgres). Installed when missing and run as root (CI); otherwise the command is printed.
system-deps:
	@missing=""; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium chromium-driver"; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
		else \
			echo "the tests need Debian packages:$$missing -- run: sudo apt-get install$$missing"; \
			exit 1; \
		fi; \
	fi

test: install system-deps
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
