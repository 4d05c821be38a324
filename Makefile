# Layerscope: `make run` installs, trains the default models if missing and serves them;
# `make test` installs and runs the test suite. Both work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEFAULT_MODELS := fraud fashion mnist
SYSTEM_PACKAGES := prometheus chromium chromium-driver wrk hey
# HAProxy: the load balancer in front of two replicas (tests/scaling, docs/scaling.md).
SYSTEM_PACKAGES += haproxy
# A Docker engine, compose and debootstrap (the local base image) for tests/deploy/.
SYSTEM_PACKAGES += docker.io docker-compose debootstrap

# Real data sets live beside the project (../shared/datasets) unless told otherwise.
LAYERSCOPE_DATA_DIR ?= $(abspath ../shared/datasets)
export LAYERSCOPE_DATA_DIR
export TF_CPP_MIN_LOG_LEVEL ?= 2
export CUDA_VISIBLE_DEVICES ?=

.PHONY: install system-deps data train run serve test lint bench clean

$(STAMP): pyproject.toml scripts/requirements.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(PYTHON) scripts/requirements.py --extra test > $(VENV)/requirements.txt
	$(BIN)/pip install --quiet -r $(VENV)/requirements.txt
	touch $@

install: $(STAMP)

# Debian packages the tests drive for real (Prometheus, headless Chromium, load generators,
# a Docker engine with compose and debootstrap for the container tests).
system-deps:
	@missing=""; for b in prometheus promtool chromium wrk hey dockerd docker-compose debootstrap haproxy; do \
	  command -v $$b >/dev/null 2>&1 || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES); \
	fi

data: install
	$(BIN)/python -m training data

# Trains each default model that has no published version yet (the compose trainer runs
# the same script).
train: install
	deploy/train-missing.sh $(DEFAULT_MODELS)

serve: install
	service/entrypoint.sh

run: train serve

test: install system-deps
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

bench: install system-deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
