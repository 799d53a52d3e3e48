# gazegen: `make demo` sets up and runs the demo end to end; `make test` sets up and runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo_out

.PHONY: setup test demo clean

$(BIN)/gazegen: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/gazegen

setup: $(BIN)/gazegen

test: setup
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/gazegen data synth-heads $(DEMO)/heads --subjects 4 --resolution 128 --gazes 8
	$(BIN)/gazegen data inspect $(DEMO)/heads --sheet $(DEMO)/heads_sheet.png
	@echo "demo: contact sheet written to $(DEMO)/heads_sheet.png"

clean:
	rm -rf $(DEMO) .pytest_cache
