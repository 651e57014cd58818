# The two commands a fresh clone needs: `make demo` and `make test`.
# Each creates .venv and installs what it needs; nothing else is required.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

CHROMIUM := /usr/bin/chromium

.PHONY: demo test sim-long bench lint typecheck clean screenshot

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/moot demo

# The dashboard's browser tests drive Debian's chromium (never a downloaded
# browser): installed here when missing, as CI runs as root.
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium (apt) for the dashboard's browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "the dashboard's browser tests need $(CHROMIUM): run 'sudo apt-get install chromium', then make test again" >&2; \
		exit 1; \
	fi

test: $(STAMP) $(CHROMIUM)
	$(BIN)/ruff check moot tests bench scripts
	$(BIN)/mypy
	$(BIN)/pytest -q

sim-long: $(STAMP)
	MOOT_SIM_SEEDS=5000 $(BIN)/pytest -q tests/sim

lint: $(STAMP)
	$(BIN)/ruff check moot tests bench scripts

typecheck: $(STAMP)
	$(BIN)/mypy

screenshot: $(STAMP) $(CHROMIUM)
	$(BIN)/python scripts/dashboard_screenshot.py --out docs/dashboard.png

clean:
	rm -rf $(VENV) build *.egg-info
