# `make run`: set up, then train RWS on the embedded digits and evaluate.  `make test`: set up, check style (ruff), then test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# One intra-op thread unless the caller says otherwise: the default models are small, and on a
# machine whose cores are busy OpenMP threads spin waiting for each other (make run took ~10x
# longer with 2 threads on 2 shared cores than with 1).
OMP_NUM_THREADS ?= 1
export OMP_NUM_THREADS

.PHONY: setup run test bench clean

# Two stamps: `make run` installs only what the main job needs; `make test` adds the test and bench extras.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned to the local CPU build, where it is missing: an open range would pull CUDA.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -e ".[test,bench]"
	touch $(TEST_STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/wakesleep train --algorithm rws --dataset digits --run-dir runs/digits-rws --overwrite

# Style first (lint, then the formatter's check: configured in pyproject.toml), then the suite.
test: $(TEST_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	WAKESLEEP_DATA_DIR=$${WAKESLEEP_DATA_DIR:-$(abspath ..)/shared/data} $(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
