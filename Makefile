# Two commands a newcomer needs: `make demo` (set up + run on the embedded default) and `make test` (everything).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	AZURE_TENANT_ID=72f988bf-86f1-41af-91ab-2d7cd011db47 $(PY) hack/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check webhook tests hack bench examples action
	$(VENV)/bin/mypy

# The whole suite: lint, type-check, unit, server and end-to-end tests against a real kube-apiserver
# (built from source on first use and cached in ~/.cache/wi-webhook-test-bin), and tests/node: the image built from
# the Dockerfile (podman) running as the chart's Deployment on a real single-node cluster (kubelet, containerd;
# needs root, installs its Debian packages: hack/test-node/prepare.sh). pytest's "no tests" (5) fails.
test: lint
	$(PY) -m pytest -q

unit: $(STAMP)
	$(PY) -m pytest -q --ignore=tests/e2e --ignore=tests/node

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
