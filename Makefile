# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck pytest servers bench wheel-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m cacheorm.demo

# redis-server, redis-cli and memcached: installed with apt-get when missing
# and running as root; otherwise this prints the command and fails.
servers:
	@bash .ci/ensure-servers

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP) servers
	$(VENV)/bin/pytest

wheel-check: $(STAMP)
	@bash .ci/wheel-check $(PY)

test: $(STAMP) servers lint typecheck pytest wheel-check

bench: $(STAMP) servers
	$(PY) -m bench

clean:
	rm -rf $(VENV) build dist .mypy_cache .pytest_cache .ruff_cache .hypothesis
