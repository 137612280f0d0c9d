# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck pytest servers bench faults wheel-check proto clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

# Test-only protobuf modules (and .pyi stubs) compiled from tests/protos/*.proto.
PROTO_STAMP := tests/proto_gen/.stamp
$(PROTO_STAMP): $(STAMP) $(wildcard tests/protos/*.proto)
	mkdir -p tests/proto_gen
	touch tests/proto_gen/__init__.py
	$(PY) -m grpc_tools.protoc -I tests/protos --python_out=tests/proto_gen --pyi_out=tests/proto_gen $(wildcard tests/protos/*.proto)
	touch $(PROTO_STAMP)

proto: $(PROTO_STAMP)

demo: $(STAMP)
	$(PY) -m cacheorm.demo

# redis-server, redis-cli and memcached: installed with apt-get when missing
# and running as root; otherwise this prints the command and fails.
servers:
	@bash .ci/ensure-servers

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP) $(PROTO_STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP) $(PROTO_STAMP) servers
	$(VENV)/bin/pytest

wheel-check: $(STAMP)
	@bash .ci/wheel-check $(PY)

test: $(STAMP) servers lint typecheck wheel-check pytest

bench: $(STAMP) servers
	$(PY) -m bench

# Servers hung, killed, restarted, a pool node and a cluster master lost, a live
# reshard, filesystem writers killed: a table of worst call times, errors, lost and
# duplicated writes (about a minute; a report, so it exits 0 even on FAIL rows).
faults: $(STAMP) servers
	$(PY) -m bench.faults

clean:
	rm -rf $(VENV) tests/proto_gen build dist .mypy_cache .pytest_cache .ruff_cache .hypothesis
