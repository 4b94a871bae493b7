# Two commands on a fresh machine: `make train` and `make test`. Both create .venv when it is
# missing and install the pinned requirements into it (constraints.txt pins the tested versions).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/digits_cnn.yaml

.PHONY: train test lint venv clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/python train.py -c $(CONFIG)

lint: $(STAMP)
	$(BIN)/ruff check .

# -n auto --dist loadfile: one worker per core, each test file on one worker (its fixtures run once).
# OMP_NUM_THREADS=1: with a worker per core, torch's default of one intra-op thread per core in
# every worker (and in every train.py and torchrun process a test starts) oversubscribes the
# cores, and OpenMP's spinning threads then slow each other down many times over (a tiny GPT's
# forward: 2 ms alone, 0.4 s oversubscribed); the suite took 20+ min that way, 10 min without.
test: $(STAMP)
	$(BIN)/ruff check .
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n auto --dist loadfile

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
