# Two commands on a fresh machine: `make demo` (the whole path on demo data) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: setup demo test test-fast bench clean

$(INSTALLED): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m tools.build_deepspeed_ops
	touch $(INSTALLED)

setup: $(INSTALLED)

demo: $(INSTALLED)
	PATH=$(abspath $(BIN)):$$PATH bash tools/demo.sh

# The whole CPU suite; the 25 slowest tests are printed at the end, so each change sees its cost.
test: $(INSTALLED)
	$(BIN)/python -m pytest -q tests --durations=25

# The unit tests alone (tests/unit: one process, no pools, no launches), for the edit loop.
test-fast: $(INSTALLED)
	$(BIN)/python -m pytest -q -m unit tests

bench: $(INSTALLED)
	$(BIN)/python -m tools.bench.loop_overhead
	$(BIN)/python -m tools.bench.data_throughput
	$(BIN)/python -m tools.bench.checkpoint_stall

clean:
	rm -rf demo runs
