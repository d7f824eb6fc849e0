# gpulab.mps: every entry point a user or CI needs. Each target sets up what it uses.
#   make lab     the lab, end to end (ansible-playbook site.yml -i inventories/lab)
#   make test    everything CI runs (lint, unit, hostile, render, metrics, sanity, molecule)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
# WHEELS=dir (made by `make wheelhouse`): install offline from it, for an air-gapped GPU host. It carries
# what the host stages need (ansible-core, nvidia-ml-py, the collections), into a venv of its own.
WHEELS ?=
ifneq ($(WHEELS),)
VENV ?= .venv-offline
endif
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

INVENTORY ?= inventories/lab
TAGS ?=
SKIP_TAGS ?=
ANSIBLE_ARGS ?=
# ansible-test needs the collection at .../ansible_collections/gpulab/mps; sanity runs on a copy there.
SANITY_ROOT := build/ansible_collections/gpulab/mps
# The GPU lane's air-gapped install: wheels for the GPU host's Python (3.12 on the lent H100).
WHEELHOUSE ?= wheelhouse
WHEEL_PYTHON ?= 3.12

.PHONY: help venv collection lab test lint unit hostile render metrics sanity molecule molecule-default molecule-fleet molecule-kind-host \
	images standins wheelhouse gpu-lane cluster-lane benchmark fleet-scale teardown clean

help:
	@echo "make lab        run site.yml against $(INVENTORY) (TAGS=..., SKIP_TAGS=..., ANSIBLE_ARGS=...; WHEELS=dir offline)"
	@echo "make test       lint + unit + hostile + render + metrics + sanity + molecule (what CI runs)"
	@echo "make metrics    a real Prometheus scrapes the MPS metrics of the stand-in daemon (REQUIRE_PROMETHEUS=1: fatal if absent)"
	@echo "make teardown   undo what the lab created"
	@echo "make wheelhouse build $(WHEELHOUSE)/ for an air-gapped GPU host (Python $(WHEEL_PYTHON))"
	@echo "make gpu-lane   the GPU integration lane (on a GPU host; WHEELS=dir to install offline)"
	@echo "make cluster-lane KUBE_BIN=dir DP_BIN=dir NVML_MOCK=dir   a real single-node Kubernetes here (root; OUT=dir)"
	@echo "make benchmark  MPS vs time-slicing benchmark (on a GPU host)"

# --- set-up ---------------------------------------------------------------------------------------
ifeq ($(WHEELS),)
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@
else
$(VENV)/.installed: tests/gpu/requirements.txt
	test -d $(WHEELS)/collections || { echo "$(WHEELS)/collections missing: build it with make wheelhouse"; exit 2; }
	PYTHON=$(PYTHON) tests/gpu/install_venv.sh $(VENV) $(WHEELS)
	$(BIN)/ansible-galaxy collection install --offline --force -p .collections \
	  $(filter-out $(WHEELS)/collections/gpulab-mps-%,$(wildcard $(WHEELS)/collections/*.tar.gz))
	touch $@
endif

venv: $(VENV)/.installed

# Link the checkout into a collections path so gpulab.mps.* resolves to the working tree (ansible.cfg).
.collections/ansible_collections/gpulab/mps:
	mkdir -p .collections/ansible_collections/gpulab
	ln -sfn ../../.. $@

collection: venv .collections/ansible_collections/gpulab/mps

# --- the lab --------------------------------------------------------------------------------------
lab: collection
	ansible-playbook site.yml -i $(INVENTORY) $(if $(TAGS),--tags $(TAGS)) $(if $(SKIP_TAGS),--skip-tags $(SKIP_TAGS)) $(ANSIBLE_ARGS)

teardown: collection
	ansible-playbook playbooks/teardown.yml -i $(INVENTORY) $(ANSIBLE_ARGS)

# --- tests ----------------------------------------------------------------------------------------
test: lint unit hostile render metrics sanity molecule

lint: collection
	ansible-lint

unit: collection
	python -m pytest -q tests/unit

# A throwaway local user attacks, root runs the modules (tests/hostile): needs root, as CI runs it.
hostile: collection
	python -m pytest -q -rs tests/hostile

render: collection
	python -m pytest -q tests/render

# A real node_exporter and Prometheus (Debian's prometheus, prometheus-node-exporter) on loopback scrape the collector
# of roles/mps_metrics over the stand-in daemon. Without them it is skipped, loudly; REQUIRE_PROMETHEUS=1 (.ci/run)
# makes that a failure.
metrics: collection
	python -m pytest -q -rs tests/metrics

sanity: collection
	rm -rf build
	mkdir -p $(SANITY_ROOT)
	git ls-files --cached --others --exclude-standard -z | xargs -0 cp --parents -t $(SANITY_ROOT)
	# ansible-test lists files with git: give the copy its own index, or it sees an ignored folder.
	cd $(SANITY_ROOT) && git init -q && git add -A
	python tests/sanity/install_pip_bootstrap.py
	cd $(SANITY_ROOT) && ansible-test sanity --local --python $$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])') --color no

# Molecule runs on Docker with locally built images (no registry is reachable). Without a Docker
# engine it is skipped, loudly; with REQUIRE_DOCKER=1 (.ci/run sets it) that is a failure instead.
# The stand-ins that the containers use are checked against the H100 transcripts first.
REQUIRE_DOCKER ?= 0

images: collection
	tests/images/build.sh

standins: collection
	python -m pytest -q tests/standins

molecule: standins
	@if docker info >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory molecule-default molecule-fleet molecule-kind-host; \
	elif [ "$(REQUIRE_DOCKER)" = 1 ]; then \
		echo "ERROR: REQUIRE_DOCKER=1 but no Docker engine answers ('docker info' failed): molecule cannot run." >&2; \
		exit 1; \
	else \
		echo "########################################################################"; \
		echo "## SKIPPED: molecule (default, fleet). No Docker engine answers here.   ##"; \
		echo "## Start one (see .ci/run) or set REQUIRE_DOCKER=1 to make this fatal. ##"; \
		echo "########################################################################"; \
	fi

molecule-default: images
	molecule test -s default

molecule-fleet: images
	molecule test -s fleet

molecule-kind-host: images
	molecule test -s kind_host

# --- GPU host -------------------------------------------------------------------------------------
wheelhouse: collection
	tests/gpu/build_wheelhouse.sh $(WHEELHOUSE) $(WHEEL_PYTHON)

gpu-lane:
	tests/gpu/run.sh $(if $(WHEELS),--wheels $(WHEELS))

# --- the cluster lane (a real single-node Kubernetes on this machine; root) --------------------------------------------
# The binaries are the user's, taken from releases (tests/cluster/lane.py names each file and where it comes from);
# without them the lane says what is missing and fails. OWNER=plugin renders the plugin's own MPS daemon instead.
KUBE_BIN ?=
DP_BIN ?=
NVML_MOCK ?=
OUT ?= tests/output/cluster-lane
OWNER ?= host
cluster-lane: collection
	python tests/cluster/lane.py --kube-bin "$(KUBE_BIN)" --dp-bin "$(DP_BIN)" --nvml-mock "$(NVML_MOCK)" \
	  --out "$(OUT)" --owner "$(OWNER)" $(CLUSTER_LANE_ARGS)

benchmark: collection
	ansible-playbook playbooks/benchmark.yml -i $(INVENTORY) $(ANSIBLE_ARGS)

fleet-scale: images
	benchmarks/fleet_scale.sh $(or $(HOSTS),20 50)

clean:
	rm -rf build .collections tests/output .pytest_cache
