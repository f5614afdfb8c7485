# The course's commands. `make help` lists them.
PYTHON ?= python3.11
VENV   ?= .venv
# In the GPU node's Jupyter container (Dockerfile.jupyter sets TRITONLAB_ENV=image) the image's
# own Python has the course installed: no virtual environment is made or used there (`make
# handin`, `make lab`), and the mounted course folder's .venv, if any, belongs to another machine.
ifeq ($(TRITONLAB_ENV),image)
BIN    := $(patsubst %/,%,$(dir $(shell command -v python)))
STAMP  := image-env
else
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
endif
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# libb64-0d: perf_analyzer links it; nginx: the load balancer in front of Triton replicas
# (tritonlab.serving.replicas; the Debian package's binary has the http2 and grpc modules)
APT_PACKAGES := libb64-0d nginx
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help system-deps venvs install assets weights configs lab lab-full test test-fast serve stop \
        status logs \
        api bench handin check-images gpu-check gpu-check-bundle node-check node-check-short \
        image-env jupyter lint clean

help:  ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# Where systemd runs, installing the nginx package also starts a system nginx on port 80: the
# course starts its own nginx (on free ports), so a system nginx this target installed is stopped.
system-deps:  ## apt packages perf_analyzer and nginx need (uses sudo when not root)
	@if dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then echo "system packages present: $(APT_PACKAGES)"; \
	else had_nginx=$$(dpkg -s nginx >/dev/null 2>&1 && echo yes); \
	$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) && \
	if [ -z "$$had_nginx" ] && systemctl is-active --quiet nginx 2>/dev/null; then \
	echo "stopping the system nginx the package started on port 80 (the course runs its own)"; \
	$(SUDO) systemctl disable --now nginx; fi; fi

# uv (a pinned wheel from PyPI, put into each environment by the pip `venv` gives it) installs
# the pinned packages: the course's environment took 49 s with it here, against 203 s with pip
# (same pins from a cold cache; pip alone used 166 s of CPU). Like pip --no-compile, it leaves
# the ~20,000 .py files uncompiled: Python compiles the few thousand the course imports on
# first use instead, and keeps them.
UV_VERSION := 0.13.10
UV_INSTALL  = $(1)/pip install --quiet --progress-bar off uv==$(UV_VERSION) && \
              $(1)/uv pip install --quiet --python $(1)/python

ifeq ($(TRITONLAB_ENV),image)
image-env:
	@:
else
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(call UV_INSTALL,$(BIN)) -e '.[dev]'
	@touch $@
endif

# Model Analyzer in a virtual environment of its own (why: requirements/model-analyzer.txt)
ANALYZER_VENV  := .venv-analyzer
ANALYZER_STAMP := $(ANALYZER_VENV)/.installed-stamp

$(ANALYZER_STAMP): requirements/model-analyzer.txt
	$(PYTHON) -m venv $(ANALYZER_VENV)
	$(call UV_INSTALL,$(ANALYZER_VENV)/bin) -r requirements/model-analyzer.txt
	@touch $@

# Both environments at once: Model Analyzer's, built beside the course's (the larger: torch),
# adds no time to a fresh set-up. Each one's lines are printed when it is done.
venvs:
ifeq ($(TRITONLAB_ENV),image)
	@echo "the image's own Python has the course installed (TRITONLAB_ENV=image): no virtual environment"
else
	@$(MAKE) -s --no-print-directory --question $(STAMP) $(ANALYZER_STAMP) || { \
	echo "installing $(VENV) and $(ANALYZER_VENV) side by side with uv (about a minute on a fresh machine here: torch is large) ..."; \
	$(MAKE) --no-print-directory --jobs=2 --output-sync=target $(STAMP) $(ANALYZER_STAMP); }
endif

install: venvs assets  ## virtual environments with the pinned packages (the course's, Model Analyzer's), sample data, weights

assets: $(STAMP)  ## sample images, perf_analyzer inputs, Food-11 weights (or a stand-in), configs
	$(BIN)/python -m tritonlab prepare

weights: $(STAMP)  ## fetch the Food-11 weights again (FOOD11_WEIGHTS=url|file|stand-in)
	$(BIN)/python -m tritonlab weights

configs: $(STAMP)  ## regenerate every config.pbtxt, warm-up file and shared model-code copy; move out model folders that are not the course's
	$(BIN)/python -m tritonlab configs

lab: install  ## run every notebook headless (quick mode) on the embedded Triton
	$(BIN)/python -m tritonlab lab

lab-full: install  ## the same with full measurement windows
	$(BIN)/python -m tritonlab lab --full

test: venvs  ## run the tests (stand-in weights if none are present; only tests marked network ask PyPI)
	$(BIN)/python -m tritonlab prepare --source stand-in
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)  ## the tests that need no Triton server (seconds, not minutes)
	$(BIN)/python -m pytest -m "not server and not notebook and not slow and not network" $(PYTEST_ARGS)

GPU_BUNDLE  ?= build/gpu-bundle
GPU_PYTHONS ?= 3.12
# No .venv travels to a GPU machine: there the check runs on that machine's own python3.
GPU_PYTHON  ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)

gpu-check-bundle: $(STAMP)  ## what gpu-check needs on a GPU machine without network (build/gpu-bundle/, < 64 MiB)
	$(BIN)/python -m tritonlab gpu-check --prepare --bundle $(GPU_BUNDLE) $(addprefix --python ,$(GPU_PYTHONS))

gpu-check:  ## the GPU variants served and measured on this machine's GPU, one report (no GPU: says so, exits 0)
	$(GPU_PYTHON) -m tritonlab gpu-check --bundle $(GPU_BUNDLE)

check-images: $(STAMP)  ## ask PyPI and the apt archives whether both GPU-node images' pins and packages exist (about a minute)
	$(BIN)/python -m tritonlab.serving.images

# The GPU node's container path, for real, on a machine without a GPU (as root: it may install
# Debian's docker.io and start dockerd); see tritonlab/node/check.py. About 30 minutes the first
# time (both images are several GB), its report in build/node-check/report.md.
node-check: install  ## both GPU-node images built, compose up, notebooks 01-11 + A1 in Docker mode, one report
	$(BIN)/python -m tritonlab node-check

node-check-short: install  ## the slice CI runs: images, compose up, notebook 01, a restart, the API, the key
	$(BIN)/python -m tritonlab node-check --short

bench: install  ## speed and memory figures against the targets (prints a table, saves data/results/bench/)
	$(BIN)/python -m tritonlab bench

handin: $(STAMP)  ## one zip to hand in (build/handin/): executed notebooks, figures, results, answers
	$(BIN)/python -m tritonlab handin

VARIANT ?= baseline
serve: install  ## start Triton in the background on 127.0.0.1 (8000 HTTP, 8001 gRPC, 8002 metrics); VARIANT=fastest serves the fastest classifier
	$(BIN)/python -m tritonlab serve --variant $(VARIANT)

stop:  ## stop the background Triton
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m tritonlab stop; else echo "nothing installed"; fi

status:  ## is the background Triton running?
	$(BIN)/python -m tritonlab status

logs:  ## the last lines of the background Triton's log
	$(BIN)/python -m tritonlab logs

api: install  ## the FastAPI endpoint on 127.0.0.1:8080 (Swagger at /docs) against the running Triton
	$(BIN)/python -m uvicorn tritonlab.api:app --host 127.0.0.1 --port 8080

jupyter: install  ## JupyterLab on the notebooks, on 127.0.0.1:8888, with this environment
	$(BIN)/jupyter lab --notebook-dir=notebooks --ip=127.0.0.1 --port=8888 --no-browser

lint:  ## ruff on the package, tests and notebooks
	$(BIN)/ruff check tritonlab tests notebooks model_repository

clean:  ## remove course output and server state (keeps the environment and weights)
	-$(BIN)/python -m tritonlab stop
	rm -rf build .tritonlab data/perf
