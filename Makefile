# DeepFill suite. Every target works from a fresh clone: the first one that needs
# Python creates .venv and installs the package (editable) with its dev and tf extras.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= dev,tf,demo,onnx
PYTEST_ARGS ?=
# apt-get as root, else through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# make sweep: which preset (conf/sweep/) on which experiment.
SWEEP ?= attention
EXPERIMENT ?= quickstart

ARGS ?=

.PHONY: help install train sweep study study-v2 eval inpaint export demo notebooks test test-all test-browser browser lint format bench gpu-check clean

help: ## show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Re-runs only when pyproject.toml changes (or the venv is missing).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install deepfill (editable) with dev, tf, demo and onnx extras

train: $(STAMP) ## train the quickstart model on the embedded sample data (ARGS="key=value ..." to override)
	$(BIN)/deepfill-train experiment=quickstart $(ARGS)

sweep: $(STAMP) ## run a sweep: make sweep SWEEP=attention|dilation|loss_weights|optuna_loss_weights [EXPERIMENT=quickstart] [ARGS="launcher=local_gpus"]
	$(BIN)/deepfill-train -m experiment=$(EXPERIMENT) +sweep=$(SWEEP) $(ARGS)

study: $(STAMP) ## the replicated ablation: attention on/off and its patch size, 3 seeds each (about 70 min on 2 CPU cores)
	$(BIN)/deepfill-train -m experiment=ca_ablation +sweep=ca_study $(ARGS)

study-v2: $(STAMP) ## DeepFill v1 against v2 at the same time budget, 3 seeds each (about 40 min on 2 CPU cores)
	$(BIN)/deepfill-train -m +sweep=family_study budget=3min $(ARGS)

eval: $(STAMP) ## score a model: make eval ARGS="weights=W.ckpt data=folder data.val.root=photos/"
	$(BIN)/deepfill-eval $(ARGS)

inpaint: $(STAMP) ## fill holes: make inpaint ARGS="weights=W.pt input=photo.jpg mask_path=mask.png"
	$(BIN)/deepfill-inpaint $(ARGS)

export: $(STAMP) ## the generator as one ONNX file: make export ARGS="weights=W.pt output=model.onnx [precision=fp16|int8]"
	$(BIN)/deepfill-export $(ARGS)

demo: $(STAMP) ## the browser demo on http://127.0.0.1:7860 (ARGS="weights=W.pt port=8000")
	$(BIN)/deepfill-demo $(ARGS)

notebooks: $(STAMP) ## execute the notebooks and store their figures (needs `make study`'s sweep; trains the quickstart model if missing)
	$(BIN)/python notebooks/execute.py $(ARGS)

test: $(STAMP) ## run the test suite (fast tests)
	$(BIN)/python -m pytest -m "not slow and not browser" --durations=15 $(PYTEST_ARGS)

# Debian's Chromium and its driver (nothing is downloaded at test time).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		echo "installing chromium and chromium-driver with apt-get"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; }

test-browser: $(STAMP) browser ## the demo in headless Chromium: upload, paint, inpaint (installs Chromium if missing)
	$(BIN)/python -m pytest -m browser $(PYTEST_ARGS)

test-all: $(STAMP) browser ## run every test, including the slow ones and the browser test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check + ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) ## run the benchmarks (2 CPU threads); writes benchmarks/results/*.json
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/api.py
	$(BIN)/python benchmarks/deploy.py --fp16 --int8

gpu-check: $(STAMP) ## before a long run on a new node: parity, a training iteration per precision, speed, DDP (at most 5 min; ARGS="--goldens DIR")
	$(BIN)/deepfill-selftest $(ARGS)

clean: ## remove caches and outputs (keeps .venv; `rm -rf .venv` to drop it)
	rm -rf .pytest_cache .ruff_cache build dist src/*.egg-info outputs multirun
	find . -name __pycache__ -type d -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
