# gridface — the two commands a fresh machine needs are `make train` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.gridface-installed
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONUNBUFFERED := 1

.DEFAULT_GOAL := help
.PHONY: help install train pipeline test test-fast test-gpu test-slurm slurm-up slurm-down lint bench bench-gpu clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -e '.[dev,export,prune,slurm,tune]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install gridface with what it needs (once)

train: $(STAMP) ## train on the built-in synthetic faces (ARGS="key=value ..." to override)
	$(PY) -m gridface.train $(ARGS)

pipeline: $(STAMP) ## train -> prune -> retrain -> export -> evaluate -> infer -> report on the built-in data (outputs/pipeline/synthetic_cpu/report/report.md; ARGS to override)
	$(PY) -m gridface.pipeline experiment=pipeline_cpu $(ARGS)

# make test's pytest processes (pytest-xdist; each test file runs whole in one of them; TEST_WORKERS=0: one process).
# A worker that ends (a test stuck in C code: tests/conftest.py) is replaced once; a second such end stops the run.
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS) --dist loadfile --max-worker-restart 1

test: $(STAMP) ## run the whole test suite (fast and slow)
	$(PY) -m pytest $(XDIST) $(ARGS)

test-fast: $(STAMP) ## run only the fast unit tests
	$(PY) -m pytest $(XDIST) -m "not slow" $(ARGS)

test-gpu: $(STAMP) ## run the GPU tests (bf16/fp16 steps, channels_last, CUDA inference, NCCL DDP, the device data path); skipped without CUDA
	$(PY) -m pytest -m gpu $(ARGS)

test-slurm: $(STAMP) ## bring up a one-node Slurm on localhost (apt, root), run the slurm tests, take it down
	tests/slurm/cluster.sh up
	$(PY) -m pytest -m slurm $(ARGS); status=$$?; tests/slurm/cluster.sh down; exit $$status

slurm-up: ## start the local Slurm cluster (tests/slurm/cluster.sh up); `tests/slurm/cluster.sh env` prints how to reach it
	tests/slurm/cluster.sh up

slurm-down: ## stop the local Slurm cluster
	tests/slurm/cluster.sh down

lint: $(STAMP) ## ruff
	$(PY) -m ruff check src tests scripts

# the newest `make train` checkpoint, if any: the deployment and pipeline figures then run a trained model;
# PRUNED=<retrained pruned .ckpt> adds its rows and makes it the model the pipeline bench runs
CHECKPOINT ?= $(firstword $(shell ls -t outputs/train/runs/*/checkpoints/best.ckpt 2>/dev/null))
PRUNED ?=

bench: $(STAMP) ## speed benchmarks side by side in one record (bench_results/record.md): deployment, inference pipeline, clustering, training, WIDER evaluation
	$(PY) scripts/bench_record.py --start
	$(PY) scripts/bench_deploy.py $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(if $(PRUNED),--pruned $(PRUNED)) --keep-models bench_results/models $(ARGS)
	$(PY) scripts/bench_infer.py --model bench_results/models/deploy.onnx --model bench_results/models/deploy_int8.onnx
	$(PY) scripts/bench_clustering.py
	$(PY) scripts/bench_train.py
	$(PY) scripts/bench_widerface.py || echo "WIDER FACE benchmark skipped (the line above says why)"
	$(PY) scripts/bench_record.py

bench-gpu: $(STAMP) ## where a GPU training run's time goes: step alone per precision/layout, loaders, end to end per epoch (bench_results/gpu)
	$(PY) scripts/bench_gpu.py --out bench_results/gpu $(ARGS)

clean: ## remove outputs and caches (keeps .venv)
	rm -rf outputs multirun .cache bench_results .pytest_cache
