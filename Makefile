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

# -n auto --dist loadfile: one worker per core, each test file on one worker (its fixtures run once)
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n auto --dist loadfile

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
