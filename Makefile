# segloop front door. Every target installs what it needs into .venv first.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.segloop-installed
REGISTRY ?= ghcr.io/segloop
TAG ?= $(shell $(BIN)/python -m components.images tag 2>/dev/null || sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
PIPELINES := pre_annotation training active_learning

.PHONY: install lock demo test docs lint format up down status compile images base-image images-test push bench clean

install: $(STAMP)

# Everything comes from requirements.lock (pip-compile of pyproject.toml + the stack, test and bench extras), so
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
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --extra stack --extra test --extra bench --allow-unsafe \
		--strip-extras --no-emit-index-url --no-emit-find-links $(LOCK_ARGS) \
		-o requirements.lock pyproject.toml

demo: install
	$(BIN)/segloop demo

test: install
	$(BIN)/pytest -q

# The manual (docs/, mkdocs.yml) into site/; --strict: a broken link or anchor, or a page left
# out of the nav, fails (tests/docs/test_docs.py runs the same build).
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

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
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
# The container engine: docker (docker buildx build) or podman (podman build); default: docker
# where its command exists, else podman.
ENGINE ?= $(if $(shell command -v docker),docker,podman)
# The Python base of the images: an official python:3.11 image, or BASE_IMAGE, which
# `make base-image` makes from Debian packages (for sites that reach no container registry).
PYTHON_IMAGE ?= python:3.11.14-slim-bookworm
BASE_IMAGE ?= localhost/segloop-python:3.11-bookworm
# torch of the CPU image: PyTorch's CPU wheel index where it answers, else PyPI (whose wheels
# carry the CUDA libraries: a larger image that runs the same). The CUDA image always uses PyPI.
CPU_TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?= $(shell curl -fsS -o /dev/null --max-time 10 $(CPU_TORCH_INDEX)/torch/ 2>/dev/null && echo $(CPU_TORCH_INDEX))
# Optional: a proxy's CA bundle for pip in the build (a build secret: never in the image), and
# (podman) a local wheel index folder DIR with DIR/simple, mounted read-only into the build.
CA_BUNDLE ?=
WHEELS_DIR ?=
CPU_IMAGE ?= $(REGISTRY)/segloop:$(TAG)
CUDA_IMAGE ?= $(REGISTRY)/segloop-cuda:$(TAG)
MLFLOW_IMAGE ?= $(REGISTRY)/mlflow:$(MLFLOW_TAG)
comma := ,
BUILD = $(if $(filter docker,$(ENGINE)),docker buildx build --load,podman build --layers --network host) \
	$(if $(CA_BUNDLE),--secret id=ca$(comma)src=$(CA_BUNDLE)) \
	$(if $(WHEELS_DIR),--volume $(abspath $(WHEELS_DIR)):$(abspath $(WHEELS_DIR)):ro \
		--build-arg WHEELS_INDEX_URL=file://$(abspath $(WHEELS_DIR))/simple) \
	--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) --build-arg VERSION=$(VERSION)

images:
	@echo "images: $(ENGINE), base $(PYTHON_IMAGE), CPU torch from $(or $(TORCH_INDEX_URL),PyPI)"
	$(BUILD) -f images/segloop.Dockerfile --target cpu \
		--build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL) -t $(CPU_IMAGE) .
	$(BUILD) -f images/segloop.Dockerfile --target cuda --build-arg TORCH_INDEX_URL= -t $(CUDA_IMAGE) .
	$(BUILD) -f images/mlflow.Dockerfile -t $(MLFLOW_IMAGE) .

base-image:
	images/base-image.sh $(BASE_IMAGE) $(ENGINE)

push: images
	for image in $(CPU_IMAGE) $(CUDA_IMAGE) $(MLFLOW_IMAGE); do $(ENGINE) push $$image || exit 1; done

# Builds the images and runs the three pipelines task by task in them on a real engine (podman
# by default: it installs it from Debian when missing); see tests/images/run.sh.
images-test: install
	ENGINE=$(ENGINE) bash tests/images/run.sh

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf build site .pytest_cache .ruff_cache
