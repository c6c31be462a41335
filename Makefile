# mlops-operator: every target has a one-line help (`make help`).
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXAMPLE ?= examples/vqvae.yaml
OUTPUT ?= mlops-runs
PYTEST_ARGS ?=

.PHONY: help system-deps setup demo test test-fast lint format generate golden cluster-up cluster-down e2e e2e-realnode e2e-argo4 e2e-kind bench clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip==26.3"
	$(BIN)/pip install --quiet --progress-bar off -c constraints.txt -e '.[operator,trainer,export,dev]'
	touch $@

# Debian packages the tests use: Fashion-MNIST, real images for the trainer tests
# (sample://fashion-mnist); chromium, the browser the browser tests drive (-m browser). A package
# counts when dpkg says "install ok installed": a removed one leaves "deinstall ok config-files",
# which `dpkg -s` still accepts. apt-get waits for the dpkg lock rather than failing when another
# apt runs.
SYSTEM_PACKAGES := dataset-fashion-mnist chromium
system-deps: ## install the Debian packages the tests use (dataset-fashion-mnist, chromium; needs root or sudo)
	@missing=$$(for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then echo "Debian packages: installed ($(SYSTEM_PACKAGES))"; else \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$sudo apt-get -o DPkg::Lock::Timeout=600 update -q && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q $$missing; fi

setup: $(STAMP) ## create .venv and install the pinned dependencies (constraints.txt)

demo: $(STAMP) ## set up, then train the example VQ-VAE locally (no cluster): results in ./mlops-runs
	$(BIN)/mlops run $(EXAMPLE) --output $(OUTPUT)

test: system-deps ## set up, lint, then run every test: the cluster suites and the rest side by side (hack/test.sh)
	hack/test.sh $(PYTEST_ARGS)

test-fast: system-deps $(STAMP) ## the tests that need neither a cluster nor long training
	$(BIN)/python -m pytest -m "not e2e and not slow and not realnode" $(PYTEST_ARGS)

lint: $(STAMP) ## ruff (lint and format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy api/mlops_api workflows/mlops_workflows operator/mlops_operator cli/mlops_cli trainers/mlops_trainers

format: $(STAMP) ## ruff format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

generate: $(STAMP) ## regenerate the CRD, the README field tables and the chart's values table
	$(BIN)/mlops crd > charts/mlops-operator/crds/mlops.dev_mlops.yaml
	$(BIN)/python hack/chart_docs.py
	$(BIN)/python -c "import pathlib; from mlops_api.docs import field_tables, splice; p = pathlib.Path('README.md'); p.write_text(splice(p.read_text(), field_tables()))"

golden: $(STAMP) ## rewrite the golden workflow files (review the diff!)
	MLOPS_REGEN_GOLDEN=1 $(BIN)/python -m pytest -q tests/workflows/test_render.py

cluster-up: ## build (first time, cached) and start etcd, Kubernetes, Argo, kwok and argo-server (the UI) locally (MLOPS_REALNODE=1: and a real node)
	hack/cluster/up.sh
	hack/cluster/argo-server-up.sh

cluster-down: ## stop the local cluster started by cluster-up
	hack/cluster/down.sh

e2e: $(STAMP) ## only the end-to-end tests against the local cluster (kwok nodes: no image builds)
	$(BIN)/python -m pytest -m e2e $(PYTEST_ARGS)

e2e-realnode: $(STAMP) ## only the tests on real pods (adds a real node to the local cluster; builds and loads the images)
	$(BIN)/python -m pytest -m realnode $(PYTEST_ARGS)

e2e-argo4: $(STAMP) ## the e2e main cases (-m argo_matrix) against Argo Workflows 4.0 on a cluster of its own, and the Kueue cases
	MLOPS_ARGO=v4 MLOPS_CLUSTER_DIR=/tmp/mlops-cluster-argo4 MLOPS_ETCD_PORT=25790 MLOPS_ETCD_PEER_PORT=25800 \
	  MLOPS_APISERVER_PORT=28443 MLOPS_KCM_PORT=22257 MLOPS_SCHEDULER_PORT=22259 \
	  $(BIN)/python -m pytest -m "e2e and (argo_matrix or kueue)" $(PYTEST_ARGS)

e2e-kind: $(STAMP) ## the same e2e tests on a kind cluster with Argo and kwok (needs Docker, kind, internet)
	PYTEST_ARGS="$(PYTEST_ARGS)" hack/kind/e2e.sh

bench: $(STAMP) ## run the benchmarks; results in bench/results/ (results.json with targets) and README.md's Performance table
	$(BIN)/python bench/run_all.py

clean: ## remove local run outputs and caches (not the cluster binaries)
	rm -rf $(OUTPUT) .pytest_cache .mypy_cache .ruff_cache
