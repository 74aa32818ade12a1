# trustmed: `make demo` and `make test` work on a fresh machine (they create .venv when missing).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= runs/demo

.PHONY: install demo test test-fast lint format results clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch (an unpinned torch would pull a multi-GB CUDA build).
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/trustmed demo --out $(OUT)

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q

test-fast: install
	$(VENV)/bin/python -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format src tests benchmarks scripts
	$(VENV)/bin/ruff check --fix .

# docs/results.md and README.md's results block, from the committed benchmarks/results/*.json.
results: install
	$(PY) scripts/make_results.py

clean:
	rm -rf runs .pytest_cache build src/*.egg-info
