# kubetier developer menu. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
KUBETIER := $(VENV)/bin/kubetier
# Cluster tooling cache (binaries, kubeconfig, kwok state): outside the repository.
export KUBETIER_CACHE ?= $(HOME)/.cache/kubetier
CLUSTER := $(PY) e2e/cluster/cluster.py

# pytest exit code 5 means "no tests collected": never a pass.
define pytest_strict
	rc=0; $(PY) -m pytest $(1) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests in $(1)" >&2; exit 1; fi; \
	exit $$rc
endef

.PHONY: help
help: ## this menu
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

.PHONY: install
install: $(VENV)/.installed ## .venv with kubetier and its dev dependencies (idempotent)

.PHONY: demo
demo: install ## the main job: local cluster + operator + router + simulated engines + traffic
	@trap '$(CLUSTER) down' EXIT; \
	$(CLUSTER) up; \
	KUBECONFIG=$$($(CLUSTER) kubeconfig-path) $(KUBETIER) demo --output demo-summary.json

.PHONY: demo-power
demo-power: install ## power capping (POLCA) on the local cluster: low tier capped under load, lifted after (docs/power.md)
	@trap '$(CLUSTER) down' EXIT; \
	$(CLUSTER) up; \
	KUBECONFIG=$$($(CLUSTER) kubeconfig-path) $(PY) -m pytest e2e/test_power.py -s -q

.PHONY: unit
unit: install ## fast tests only (no cluster)
	@$(call pytest_strict,tests)

.PHONY: lint
lint: install ## ruff (lint + format check), mypy (strict for api/policy) and the import contracts
	$(VENV)/bin/ruff check operator tests e2e charts image conftest.py
	$(VENV)/bin/ruff format --check operator tests e2e charts image conftest.py
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

.PHONY: typecheck
typecheck: install ## mypy: strict for kubetier.api and kubetier.policy, checked elsewhere
	$(VENV)/bin/mypy

.PHONY: fmt
fmt: install ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix operator tests e2e charts image conftest.py
	$(VENV)/bin/ruff format operator tests e2e charts image conftest.py

.PHONY: lint-imports
lint-imports: install ## layer contract: api/policy import no Kubernetes, HTTP or metrics library
	$(VENV)/bin/lint-imports

.PHONY: e2e
e2e: install ## e2e on the local cluster (brings it up, runs, brings it down even on failure)
	@start=$$(date +%s); \
	trap 'd=$$(date +%s); $(CLUSTER) down; echo "[phase] cluster-down took $$(( $$(date +%s) - d ))s"' EXIT; \
	$(CLUSTER) up; \
	echo "[phase] cluster-up took $$(( $$(date +%s) - start ))s"; \
	t=$$(date +%s); rc=0; \
	KUBECONFIG=$$($(CLUSTER) kubeconfig-path) $(PY) -m pytest e2e --ignore=e2e/vllm || rc=$$?; \
	echo "[phase] e2e tests took $$(( $$(date +%s) - t ))s"; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests in e2e" >&2; exit 1; fi; \
	exit $$rc

.PHONY: test
test: install ## everything, in order: cluster ingredients, go tools, lint, unit, verify, image, e2e, real vLLM (the README's test command; .ci/run calls it)
	@t=$$(date +%s); $(MAKE) --no-print-directory ingredients; echo "[phase] ingredients took $$(( $$(date +%s) - t ))s"
	@t=$$(date +%s); $(PY) image/gotools.py install; echo "[phase] go tools (crane, promtool, prometheus; cached) took $$(( $$(date +%s) - t ))s"
	@$(MAKE) --no-print-directory lint
	@t=$$(date +%s); $(MAKE) --no-print-directory unit; echo "[phase] unit took $$(( $$(date +%s) - t ))s"
	@$(MAKE) --no-print-directory verify
	@t=$$(date +%s); $(MAKE) --no-print-directory image-test; echo "[phase] image-test took $$(( $$(date +%s) - t ))s"
	@$(MAKE) --no-print-directory e2e
	@t=$$(date +%s); $(MAKE) --no-print-directory e2e-vllm; echo "[phase] e2e-vllm took $$(( $$(date +%s) - t ))s"

.PHONY: image
image: install ## the container image without Docker: OCI layout + tarball under build/image, digest and size
	$(PY) image/build.py build

.PHONY: image-test
image-test: image ## run the built image's root (read-only, non-root) and check the Dockerfile matches
	$(PY) image/gotools.py install crane
	@$(call pytest_strict,image/tests)

.PHONY: e2e-vllm
e2e-vllm: install ## real vLLM (CPU build, cached venv ~6 GB) behind the router: OpenAI client, metrics, mid-stream resume
	python3 e2e/vllm/install.py
	@$(call pytest_strict,e2e/vllm)

.PHONY: tools
tools: ## build crane, promtool and prometheus from the Go module proxy (cached in ~/.cache/kubetier)
	python3 image/gotools.py install

.PHONY: ingredients
ingredients: install ## build/unpack the cluster ingredients into the cache (helm and kubectl for the chart tests, the local cluster's binaries)
	$(CLUSTER) install

.PHONY: cluster-up
cluster-up: install ## build/install the cluster ingredients (cached) and start a local KWOK GPU cluster
	$(CLUSTER) up

.PHONY: cluster-down
cluster-down: install ## stop the local cluster and every process it started
	$(CLUSTER) down

.PHONY: generate
generate: install ## regenerate CRDs, chart CRDs and other generated files
	$(KUBETIER) crds --write crds/
	$(KUBETIER) crds --write charts/kubetier/crds/
	$(PY) charts/kubetier/hack/crd_reference.py --write
	$(KUBETIER) observability write charts/kubetier/files

.PHONY: verify
verify: install ## fail when anything generated has drifted from its source
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	$(KUBETIER) crds --write $$tmp/crds; \
	diff -ru --exclude=samples crds $$tmp/crds || { echo "crds/ drifted: run make generate" >&2; exit 1; }; \
	diff -ru charts/kubetier/crds $$tmp/crds --exclude=samples || { echo "charts/kubetier/crds drifted: run make generate" >&2; exit 1; }; \
	$(PY) charts/kubetier/hack/crd_reference.py | diff -u docs/crd-reference.md - || { echo "docs/crd-reference.md drifted: run make generate" >&2; exit 1; }; \
	$(KUBETIER) observability write $$tmp/obs >/dev/null; \
	diff -ru $$tmp/obs charts/kubetier/files || { echo "charts/kubetier/files drifted: run make generate" >&2; exit 1; }
	@echo "generated files are up to date"

.PHONY: bench
bench: install ## benchmarks: print figures, write JSON under bench-results/
	mkdir -p bench-results
	$(KUBETIER) engine-sim bench --output bench-results/engine-sim.json
	$(KUBETIER) router bench --output bench-results/router.json
	$(KUBETIER) simulate bench --output bench-results/sim.json
	$(KUBETIER) simulate bench --servers 1000 --requests 200000 --no-profile --output bench-results/sim-1000.json
	@# the same two runs on the mypyc-compiled simulator (same results; skipped without a C compiler)
	if $(PY) -m kubetier.sim.native build; then \
	  KUBETIER_SIM_NATIVE=1 $(KUBETIER) simulate bench --no-profile --output bench-results/sim-compiled.json; \
	  KUBETIER_SIM_NATIVE=1 $(KUBETIER) simulate bench --servers 1000 --requests 200000 --no-profile --output bench-results/sim-1000-compiled.json; \
	else echo "compiled simulator not built: skipped its bench lines" >&2; fi
	$(KUBETIER) simulate learning-bench --output bench-results/sim-learning.json
	$(KUBETIER) simulate scenario-bench --output bench-results/sim-scenarios.json

.PHONY: sim-native
sim-native: install ## compile the fleet simulator's hot modules with mypyc (optional; then KUBETIER_SIM_NATIVE=1)
	$(PY) -m kubetier.sim.native build

.PHONY: clean
clean: ## remove the venv and local results (not the cluster cache)
	rm -rf $(VENV) bench-results sim-results
