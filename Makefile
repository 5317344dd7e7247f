# Two commands do everything on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,sim]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --cov=icn_p2p --cov-report=term tests

demo: $(STAMP)
	$(BIN)/icn-sim run simulations/scenarios/quickstart.toml --out demo-out

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --out BENCHMARKS.md

clean:
	rm -rf $(VENV) demo-out .pytest_cache .coverage
