# kubetrain developer commands. `make run` and `make test` work on a fresh machine: the first
# call creates .venv and installs the project into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kubetrain-installed
PYTEST_ARGS ?=

.PHONY: install run test lint typecheck unit bench crd manifests images clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# A current pip first: older resolvers (23.x) backtrack for many minutes through ray and
	# kornia versions on this set of packages; a current one settles at once.
	$(BIN)/pip install --quiet --upgrade "pip>=25"
	# The CPU build first and pinned: an unpinned torch pulled in by a dependency is a
	# multi-GB CUDA download.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)  ## the main job: the digits example, on this machine, no cluster
	$(BIN)/kubetrain run examples/digits.yaml

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck  ## everything CI runs
	@# The cluster tests need a real cluster with the images in it: without KUBECONFIG, start
	@# (or find) the machine's own one and build the images that are missing or whose sources
	@# changed (skipped when current). If that fails, those tests skip and say why; with
	@# KUBETRAIN_REQUIRE_CLUSTER=1 (CI with a cluster) it fails here.
	@bash hack/test-cluster.sh
	@# The cluster tests one at a time, then the rest over two processes (hack/run-tests.sh);
	@# with PYTEST_ARGS, one pytest run over what they select.
	PYTEST=$(BIN)/pytest bash hack/run-tests.sh $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/train_throughput.py

crd: $(STAMP)  ## regenerate crds/ (and the chart's copy) from the API models
	$(BIN)/kubetrain crd > crds/trainingjobs.kubetrain.io.yaml
	cp crds/trainingjobs.kubetrain.io.yaml charts/kubetrain/crds/

manifests: crd  ## regenerate manifests/kubetrain.yaml from the Helm chart (needs helm)
	bash hack/render-manifests.sh > manifests/kubetrain.yaml

images:  ## build the operator and worker images into the local cluster (root, buildah)
	bash hack/build-images.sh

clean:
	rm -rf $(VENV) kubetrain-runs .pytest_cache .mypy_cache .ruff_cache
