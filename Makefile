# Everything a fresh clone needs: `make test` and `make demo` install what they use.
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PROTO_SRC := $(wildcard protos/*.proto)
PROTO_OUT := $(PROTO_SRC:.proto=_pb2.py)

export NUMBA_CACHE_DIR := $(CURDIR)/.cache/numba
export TF_CPP_MIN_LOG_LEVEL := 2
# glibc returns every large temporary to the OS by default (page faults on each RPC): keep them.
export MALLOC_MMAP_THRESHOLD_ := 67108864
export MALLOC_TRIM_THRESHOLD_ := 268435456
# numba's OpenMP workers sleep between kernels instead of spinning on shared cores (ps/kernels/threads.py).
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup protos prometheus-server test test-fast fuzz demo bench bench-deps lint clean

setup: $(STAMP) protos prometheus-server

# The real Prometheus server the metrics tests scrape with; optional (the test skips without it), so a
# machine without apt or root still sets up.
prometheus-server:
	@command -v prometheus >/dev/null 2>&1 || { \
	  command -v apt-get >/dev/null 2>&1 && SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo -n ) && \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends prometheus; \
	} >/dev/null 2>&1 || echo "note: prometheus not installed (apt-get unavailable or failed); its test will be skipped"

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "pip==26.3"
	$(BIN)/python -m pip install -q --disable-pip-version-check -c requirements.lock -e '.[dev]'
	# requires `tensorflow` (the GPU wheel) by name: installed without dependencies, pinned by the lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -c requirements.lock tensorflow-serving-api
	touch $(STAMP)

protos: $(STAMP) $(PROTO_OUT)

protos/%_pb2.py: protos/%.proto $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. $<

test: setup
	$(BIN)/python -m pytest -q tests

# The unit tests: no processes started, no model trained end to end (those are marked slow).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" tests

# The property tests of the store and the PS fuzz test with a long randomized budget (MONOLITH_FUZZ_EXAMPLES
# examples per test, default 1000; `make test` runs 25, repeatably).
fuzz: setup
	MONOLITH_HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q tests/test_store_properties.py tests/test_ps_fuzz.py

demo: setup
	$(BIN)/python -m launch.demo

# Runs every benchmark and writes their output, with the machine's load, to benchmarks/RESULTS.md.
bench: bench-deps
	$(BIN)/python benchmarks/write_results.py

# What only benchmarks use, never in `setup`: tf_keras (Keras 2) for TF's ParameterServerStrategy
# (benchmarks/pss_peer.py; --no-deps: its requirement on `tensorflow` would pull the GPU wheel beside
# tensorflow-cpu), and matplotlib for online_bench's plot (the lock keeps numpy where it is).
TF_KERAS = tf_keras==$(shell $(BIN)/python -c "import importlib.metadata as m; print(m.version('tensorflow-cpu'))" 2>/dev/null)
MATPLOTLIB = matplotlib==3.11.2
bench-deps: setup
	$(BIN)/python -c "import tf_keras" 2>/dev/null || $(BIN)/python -m pip install -q --disable-pip-version-check --no-deps "$(TF_KERAS)"
	$(BIN)/python -c "import matplotlib" 2>/dev/null || $(BIN)/python -m pip install -q --disable-pip-version-check -c requirements.lock "$(MATPLOTLIB)"

# ruff (style, imports, complexity, simplifications) and mypy (everything but the numba kernels).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .cache protos/*_pb2*.py protos/*_pb2*.pyi
