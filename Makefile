# pasarela: `make demo` runs the main job (the 2015 rehearsal on the embedded SQLite
# default), `make test` runs the checks and the tests.
# Both bootstrap .venv with the machine's python3 and pip on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo live-demo test lint typecheck unit bench bench-sim clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pasarela run scenarios/library/pisee-2015.toml --out out

live-demo: $(STAMP)
	$(BIN)/pasarela demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/relay.py

bench-sim: $(STAMP)
	$(BIN)/python bench/sim_scale.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis out
