# segloop front door. Every target installs what it needs into .venv first.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.segloop-installed
REGISTRY ?= ghcr.io/segloop
TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
PIPELINES := pre_annotation training active_learning

.PHONY: install lock demo test lint format up down status compile images push bench clean

install: $(STAMP)

# Everything comes from requirements.lock (pip-compile of pyproject.toml + the test and bench extras), so
# a fresh clone installs the same versions on any day. pip itself is pinned there too.
$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=python3 ...'"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$$(grep '^pip==' requirements.lock)"
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Regenerate the lock after changing dependencies in pyproject.toml. Existing pins stay unless
# asked: `make lock LOCK_ARGS="--upgrade-package mlflow"` (one package) or LOCK_ARGS=--upgrade.
LOCK_ARGS ?=
lock: install
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --extra test --extra bench --allow-unsafe \
		--strip-extras --no-emit-index-url --no-emit-find-links $(LOCK_ARGS) \
		-o requirements.lock pyproject.toml

demo: install
	$(BIN)/segloop demo

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint images/*.Dockerfile

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

up: install
	$(BIN)/segloop up

down: install
	$(BIN)/segloop down

status: install
	$(BIN)/segloop status

compile: install
	mkdir -p build/pipelines
	for p in $(PIPELINES); do $(BIN)/segloop compile $$p --output build/pipelines/$$p.yaml || exit 1; done

MLFLOW_TAG ?= 3.17.2

images:
	docker buildx build -f images/cpu.Dockerfile -t $(REGISTRY)/segloop:$(TAG) --load .
	docker buildx build -f images/cuda.Dockerfile -t $(REGISTRY)/segloop-cuda:$(TAG) --load .
	docker buildx build -f images/mlflow.Dockerfile -t $(REGISTRY)/mlflow:$(MLFLOW_TAG) --load .

push:
	docker buildx build -f images/cpu.Dockerfile -t $(REGISTRY)/segloop:$(TAG) --push .
	docker buildx build -f images/cuda.Dockerfile -t $(REGISTRY)/segloop-cuda:$(TAG) --push .
	docker buildx build -f images/mlflow.Dockerfile -t $(REGISTRY)/mlflow:$(MLFLOW_TAG) --push .

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf build .pytest_cache .ruff_cache
