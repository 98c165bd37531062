# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install compile run test lint typecheck services bench migration clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# The ingest hot paths compiled by mypyc where a C compiler is (see core/compiled.py);
# it does nothing when they are compiled and current.
compile: install
	$(BIN)/python -m core.compiled

run: compile
	$(BIN)/nurture run

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

services:
	bash scripts/ensure-services

test: compile lint typecheck services
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: compile services
	$(BIN)/python -m bench

migration: install
	$(BIN)/python -c "from core.migrate import make_revision; import sys; make_revision(sys.argv[1], sys.argv[2])" "sqlite:///$$(mktemp -d)/m.sqlite3" "$(MESSAGE)"

clean:
	rm -rf $(VENV) .nurture .pytest_cache .mypy_cache .ruff_cache build
	find . -name '*.so' -not -path './$(VENV)/*' -delete
