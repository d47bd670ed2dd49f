# Two commands on a fresh machine: `make demo` (the whole path on demo data) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(INSTALLED): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(INSTALLED)

setup: $(INSTALLED)

demo: $(INSTALLED)
	PATH=$(abspath $(BIN)):$$PATH bash tools/demo.sh

test: $(INSTALLED)
	$(BIN)/python -m pytest -q tests

bench: $(INSTALLED)
	$(BIN)/python -m tools.bench.loop_overhead
	$(BIN)/python -m tools.bench.data_throughput
	$(BIN)/python -m tools.bench.checkpoint_stall

clean:
	rm -rf demo runs
