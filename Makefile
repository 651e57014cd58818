# The two commands a fresh clone needs: `make demo` and `make test`.
# Each creates .venv and installs what it needs; nothing else is required.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test sim-long bench lint typecheck clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/moot demo

test: $(STAMP)
	$(BIN)/ruff check moot tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q

sim-long: $(STAMP)
	MOOT_SIM_SEEDS=5000 $(BIN)/pytest -q tests/sim

lint: $(STAMP)
	$(BIN)/ruff check moot tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info
