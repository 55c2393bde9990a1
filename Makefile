# The README's two commands: `make run` and `make test`. Everything lands in the repo
# (.venv/, node_modules/); nothing is installed globally.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: install run test lint bench clean

install: $(STAMP) node_modules/.bin/configurable-http-proxy

# Re-install only when the package metadata changes.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel, not gigabytes of CUDA packages.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

node_modules/.bin/configurable-http-proxy: package.json
	npm install --no-audit --no-fund --silent
	touch $@

run: install
	$(VENV)/bin/loophub up --port $(PORT)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

# The benchmarks compare with peers (DVC): the `bench` extra installs them. A benchmark
# whose peer is missing says how to install it and exits non-zero (--no-peer: run without).
bench: install
	$(PY) -m pip install --quiet -e '.[bench]'
	for script in benchmarks/[!_]*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) node_modules .pytest_cache test-artifacts
