# tinkex developer tasks. `make test` and `make demo` build .venv from nothing when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DURATION ?= 600
FUZZ_EXAMPLES ?= 2000

.PHONY: install demo test unit lint typecheck bench serve soak fuzz compat clean

$(STAMP): setup.cfg setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,tokenizers,progress,dask,lm-eval,dev]'
	touch $(STAMP)

install: $(STAMP)

# The demo installs only what it runs (client, server, tokenizers, progress bars), so a fresh
# clone prints text sooner; `make install` / `make test` add the rest.
DEMO_STAMP := $(VENV)/.demo-installed

$(DEMO_STAMP): setup.cfg setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,tokenizers,progress]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/python examples/quickstart_stream.py

lint: $(STAMP)
	$(BIN)/ruff check tinkex tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest --cov=tinkex --cov-report=term -m "not slow" tests

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/server_throughput.py
	$(BIN)/python bench/client_overhead.py
	$(BIN)/python bench/stream_latency.py
	$(BIN)/python bench/batch.py
	$(BIN)/python bench/lm_eval.py 2>/dev/null
	$(BIN)/python bench/inflight.py

serve: $(STAMP)
	$(BIN)/tinkex serve

soak: $(STAMP)
	TINKEX_SOAK_SECONDS=$(DURATION) $(BIN)/python -m pytest -m soak -p no:cacheprovider --timeout=0 \
		-o log_cli=true --log-cli-level=INFO tests

fuzz: $(STAMP)
	TINKEX_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest --timeout=0 tests/unit/test_fuzz.py

compat: $(STAMP)
	$(BIN)/python -m pytest -m compat tests

clean:
	rm -rf $(VENV) .venv-* build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .coverage
