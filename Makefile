# The two README commands: `make run` (set up + main job) and `make test` (set up + tests).
# Works on a machine with only python3 (3.11) and access to PyPI: uv is bootstrapped into .tools/.

SHELL := /bin/bash
.DEFAULT_GOAL := help
UV_VERSION := 0.13.8
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
FERFLOW := $(VENV)/bin/ferflow
export UV_PYTHON := python3.11
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: help setup data dataset run test lint serve pipeline pipeline-smoke reference bench-data bench-serving clean system-deps

help:
	@echo "make run   - set up, pull the DVC data, run the main job: the training pipeline, default profile"
	@echo "             (kfp.local: ingest + GX gate, Optuna study, full training, evaluation, registry gate)"
	@echo "make test  - set up, pull the DVC data, run the test suite"
	@echo "make pipeline-smoke - the same pipeline, smoke profile (a few hundred images, ~5 min)"
	@echo "make dataset        - only pull, ingest (FERPlus + photos), validate and describe the data"
	@echo "make reference      - retrain the committed reference model (configs/reference.yaml)"
	@echo "make serve - the BentoML service on :3000"
	@echo "make lint  - ruff"

.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/python -m pip install -q "uv==$(UV_VERSION)"

$(VENV)/.synced: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --compile-bytecode
	touch $@

setup: $(VENV)/.synced

data: setup
	$(FERFLOW) data pull

# the main job: the Kubeflow training pipeline on its embedded defaults, through kfp.local
run: data
	$(FERFLOW) pipeline run --profile default

dataset: data
	$(FERFLOW) data ingest --out artifacts/canonical --report artifacts/validation
	$(FERFLOW) data stats artifacts/canonical

# retrain the committed reference model from its recipe (configs/reference.yaml); add
# ARGS=--resume to continue after an interruption
reference: dataset
	$(FERFLOW) train --config reference --dataset artifacts/canonical --run-dir artifacts/train/reference \
		--export-dir models/reference $(ARGS)

# Debian packages the tests drive for real: Chromium (web demo test) and PostgreSQL
# (parallel Optuna workers, MLflow on PostgreSQL). Installed only when missing.
system-deps:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@scripts/postgres.sh install

test: data system-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

pipeline-smoke: data
	$(FERFLOW) pipeline run --profile smoke

pipeline: run

serve: setup
	$(FERFLOW) serve --port 3000

bench-serving: setup
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || true
	$(VENV)/bin/python bench/serving.py --json artifacts/bench/serving.json

bench-data: data
	$(VENV)/bin/python bench/ingest.py

clean:
	rm -rf artifacts
