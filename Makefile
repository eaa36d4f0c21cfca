# Everything a fresh clone needs: `make train` and `make test` build the environment and data first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The deprecated WML client (ibm-watson-machine-learning) in a test environment of its own: it
# needs numpy 1.x, TensorFlow numpy 2. The main environment has the maintained client.
WML_VENV := .venv-wml-deprecated
WML_STAMP := $(WML_VENV)/.installed
TF214_VENV := .venv-tf214
TF214_STAMP := $(TF214_VENV)/.installed
# WML's current runtime, Runtime 25.1 (runtime-25.1-py3.12: TensorFlow 2.18, Keras 3), runs on
# Python 3.12: pyenv's where there is one (its shim only answers for the global version).
TF218_VENV := .venv-tf218
TF218_STAMP := $(TF218_VENV)/.installed
PYTHON312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3.12)
# The Kubernetes policy scanner (checkov) has its own environment: it pins boto3 1.35, the job
# needs >= 1.36 (COS checksums).
SCAN_VENV := .venv-scan
SCAN_STAMP := $(SCAN_VENV)/.installed
# pip warns once per package about this machine's optional local index folders: noise.
QUIET_PIP := { grep -v 'is ignored: it is neither a file nor a directory' || true; }

# Images (docker/build.sh): docker where an engine answers, podman otherwise. VARIANT=cpu|gpu.
VARIANT ?= cpu
IMAGE ?= mnist-job:$(VARIANT)

.PHONY: help venv venv-wml-deprecated venv-tf214 venv-tf218 data train test lint format lock docs bench bench-short bench-determinism bench-heldout bench-runs bench-startup image image-test image-test-gpu clean

help:
	@echo "make train   - set up, fetch MNIST, train with defaults (results under ./runs)"
	@echo "make test    - set up, fetch MNIST, run lint and the whole test suite"
	@echo "make data    - fetch and verify real MNIST into ./data (idempotent)"
	@echo "make bench   - default recipe vs the notebook: time to 99%, final accuracy, samples/s (bench-short: quick)"
	@echo "make bench-determinism - samples/s with DETERMINISTIC=on against off (median of 3, alternated)"
	@echo "make bench-heldout - recipe variants on a held-out part of the training set (HELDOUT_VARIANTS, HELDOUT_SEEDS)"
	@echo "make bench-runs - runs / champion lookup / prune cost with 1,000 and 10,000 runs"
	@echo "make bench-startup - the job's own start-up and exit time around a tiny training"
	@echo "make image   - build the image (VARIANT=cpu|gpu; docker, or podman without an engine)"
	@echo "make image-test - build the CPU image with podman and run it as docker run would"
	@echo "make image-test-gpu - the same for the GPU image (no GPU needed; ~3 GB of CUDA wheels)"
	@echo "make lock    - re-resolve requirements*.lock from pyproject.toml"
	@echo "make docs    - regenerate docs/configuration.md's variable table from job/config/settings.py"
	@echo "make lint / format / clean"

# A side environment from one lock: $(call lock_venv,PYTHON,DIR,LOCK) (its stamp: DIR/.installed).
define lock_venv
	$(1) -m venv $(2)
	$(2)/bin/python -m pip install --quiet --upgrade "pip>=24" 2>&1 | $(QUIET_PIP)
	$(2)/bin/python -m pip install --quiet -r $(3) 2>&1 | $(QUIET_PIP)
	touch $(2)/.installed
endef

$(STAMP): requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24" 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install --quiet -r requirements-dev.lock 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1 | $(QUIET_PIP)
	touch $(STAMP)

venv: $(STAMP)

$(WML_STAMP): requirements-wml-deprecated.lock pyproject.toml
	$(call lock_venv,$(PYTHON),$(WML_VENV),requirements-wml-deprecated.lock)

venv-wml-deprecated: $(WML_STAMP)

# WML's TensorFlow runtime (tensorflow_rt24.1-py3.11: TensorFlow 2.14.1, Keras 2), in which
# tests/test_runtimes.py runs the model-definition zip's own command.
$(TF214_STAMP): requirements-tf214.lock
	$(call lock_venv,$(PYTHON),$(TF214_VENV),requirements-tf214.lock)

venv-tf214: $(TF214_STAMP)

# WML's Runtime 25.1 (runtime-25.1-py3.12: TensorFlow 2.18.1, Keras 3, Python 3.12), in which
# tests/test_runtimes.py runs the model-definition zip's command too.
$(TF218_STAMP): requirements-tf218.lock
	$(call lock_venv,$(PYTHON312),$(TF218_VENV),requirements-tf218.lock)

venv-tf218: $(TF218_STAMP)

$(SCAN_STAMP): requirements-scan.lock
	$(call lock_venv,$(PYTHON),$(SCAN_VENV),requirements-scan.lock)

data: $(STAMP)
	$(PY) -m job data

train: data
	$(PY) -m job train

# Checks the policy scanner may skip, each with a line saying why (and a row in
# docs/deployment.md, "Policy scan"; a test keeps the two equal), e.g.
#   CHECKOV_SKIP += CKV_K8S_8  # liveness probe: ...
# None is skipped today.
CHECKOV_SKIP :=
comma := ,
empty :=
space := $(empty) $(empty)

# Ruff, then each overlay rendered and scanned on its own (checkov matches NetworkPolicies to
# pods across all the files it is given, so one overlay's policy could cover another's pods).
# --skip-download: no network; the checks ship with the package.
lint: $(STAMP) $(SCAN_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	scan=$$(mktemp -d); trap 'rm -rf "$$scan"' EXIT; \
	for overlay in k8s/overlays/*/; do \
	  name=$$(basename "$$overlay"); mkdir "$$scan/$$name"; echo "checkov: $$overlay"; \
	  kubectl kustomize "$$overlay" > "$$scan/$$name/rendered.yaml"; \
	  $(SCAN_VENV)/bin/checkov --quiet --compact --skip-download --framework kubernetes \
	    $(if $(CHECKOV_SKIP),--skip-check $(subst $(space),$(comma),$(strip $(CHECKOV_SKIP)))) \
	    -d "$$scan/$$name" || { echo "checkov: the $$name overlay fails the checks above"; exit 1; }; \
	done

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test: data lint $(WML_STAMP) $(TF214_STAMP) $(TF218_STAMP)
	$(PY) -m pytest

# docs/configuration.md's variable table, regenerated from job/config/settings.py (a test
# compares them).
docs: $(STAMP)
	$(PY) -c 'import pathlib; from job import config; p = pathlib.Path("docs/configuration.md"); \
	  begin, end = "<!-- variables:begin -->\n", "<!-- variables:end -->"; t = p.read_text(); \
	  head, rest = t.split(begin, 1); p.write_text(head + begin + config.markdown_table() + end + rest.split(end, 1)[1])'

lock: $(STAMP)
	$(VENV)/bin/pip-compile -q --no-header --strip-extras --no-emit-index-url --no-emit-find-links -o requirements.lock pyproject.toml
	$(VENV)/bin/pip-compile -q --no-header --strip-extras --no-emit-index-url --no-emit-find-links --extra dev --extra wml -o requirements-dev.lock pyproject.toml
	$(VENV)/bin/pip-compile -q --no-header --strip-extras --no-emit-index-url --no-emit-find-links -o requirements-wml-deprecated.lock requirements-wml-deprecated.in
	$(VENV)/bin/pip-compile -q --no-header --strip-extras --no-emit-index-url --no-emit-find-links -o requirements-tf214.lock requirements-tf214.in
	$(VENV)/bin/pip-compile -q --no-header --strip-extras --no-emit-index-url --no-emit-find-links -o requirements-gpu.lock requirements-gpu.in
	$(VENV)/bin/pip-compile -q --no-header --strip-extras --no-emit-index-url --no-emit-find-links -o requirements-scan.lock requirements-scan.in

image: data
	docker/build.sh $(VARIANT) $(IMAGE)

# No registry is reachable here: a local base image, the real Dockerfile, podman.
image-test: data $(STAMP)
	CONTAINERS_CONF=$(CURDIR)/docker/containers.conf docker/podman-setup.sh
	CONTAINERS_CONF=$(CURDIR)/docker/containers.conf IMAGE_TEST=1 \
	  $(PY) -m pytest -p no:cacheprovider tests/image/test_image.py

# The GPU variant, built and run without a GPU; not in CI (about 3 GB of CUDA wheels).
image-test-gpu: data $(STAMP)
	CONTAINERS_CONF=$(CURDIR)/docker/containers.conf docker/podman-setup.sh
	CONTAINERS_CONF=$(CURDIR)/docker/containers.conf IMAGE_TEST=1 \
	  $(PY) -m pytest -p no:cacheprovider tests/image/test_gpu_image.py

clean:
	rm -rf $(VENV) $(WML_VENV) $(TF214_VENV) $(TF218_VENV) $(SCAN_VENV) .pytest_cache .ruff_cache *.egg-info

bench: data
	$(PY) bench/bench.py

bench-short: data
	$(PY) bench/bench.py --short

# Determinism's cost alone: DETERMINISTIC=on against off, alternated, median of 3 each.
bench-determinism: data
	$(PY) bench/bench.py --determinism

# Recipe choices compared on the last 10,000 training digits, never on the test set; the
# default reruns the comparison behind the fast recipe's learning rate (README, Performance).
HELDOUT_SEEDS ?= 1,2,3,4,5
HELDOUT_VARIANTS ?= LEARNING_RATE=0.003 -
bench-heldout: data
	$(PY) -m bench.heldout --seeds $(HELDOUT_SEEDS) $(HELDOUT_VARIANTS)

# What `runs`, the champion lookup and prune cost with 1,000 and 10,000 runs in one bucket.
bench-runs: $(STAMP)
	$(PY) bench/runs_scale.py

# The job's own cost around training: first log line, first epoch, exit after publication.
bench-startup: data
	$(PY) bench/startup.py

# `predict` on pictures in four styles (scans, page corners, photos, boards), before and after
# MNIST's preprocessing; trains a 3-epoch model first unless PREDICT_MODEL names one.
.PHONY: bench-predict
bench-predict: data
	$(PY) bench/predict_styles.py $(if $(PREDICT_MODEL),--model $(PREDICT_MODEL))
