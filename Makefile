# kelpseg — every user-facing step is a target here. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
KELPSEG := $(BIN)/kelpseg
STAMP := $(VENV)/.installed

DATA_DIR ?= data
WORKERS ?= 2
SEED ?= 0
N_TRAIN ?= 300
N_TEST ?= 60
FOLD_NUMBER ?= 0
N_FOLDS ?= 10
TRAIN_CONFIG ?= configs/train/cpu-demo.yaml
RUNS_DIR ?= runs
RUN_DIR ?=
CHECKPOINT ?= best
PREDS_INPUT_DIR ?= $(DATA_DIR)/raw/test/images
PREDS_OUTPUT_DIR ?= $(DATA_DIR)/predictions/single-model
GT_DIR ?=
PREDS_DIR ?= $(PREDS_OUTPUT_DIR)
THRESHOLD ?=
AVG_PREDS_VERSION ?= cv
FOLD_RUN_DIRS ?= $(sort $(wildcard $(RUNS_DIR)/*fold*))
FOLD_WEIGHTS ?=
BENCH_ARGS ?=

.PHONY: help setup run test lint format bench clean synth check-data

help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-36s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP) ## Create .venv and install kelpseg with its dev extras

run: $(STAMP) ## The main job end to end (synthetic demo data unless data/raw holds real data)
	$(KELPSEG) run --data-dir $(DATA_DIR) --workers $(WORKERS)

test: $(STAMP) ## Run the test suite
	$(BIN)/pytest -q

lint: $(STAMP) ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## Apply ruff formatting and fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP) ## Benchmarks: one JSON object per line
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

clean: ## Remove caches (not data, runs or .venv)
	rm -rf .pytest_cache .ruff_cache build dist src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# ---- data ------------------------------------------------------------------------------------
synth: $(STAMP) ## Generate the synthetic dataset into DATA_DIR (N_TRAIN, N_TEST, SEED)
	$(KELPSEG) synth --data-dir $(DATA_DIR) --n-train $(N_TRAIN) --n-test $(N_TEST) --seed $(SEED) --workers $(WORKERS)

check-data: $(STAMP) ## Verify DATA_DIR against its metadata CSV (add CHECKSUMS=1 for md5)
	$(KELPSEG) check-data --data-dir $(DATA_DIR) --workers $(WORKERS) $(if $(CHECKSUMS),--checksums,)
