# ML60 - one target per milestone.  `make help` lists them all.
#
#   make quickstart            install into .venv, run every built milestone in quick mode
#   make test                  install into .venv, run the pytest checks
#   make test-fast             the unit tests and exercise checks only (no training runs)
#   make install CPU=1         torch without CUDA (about 1.5 GB instead of 6.3 GB; see the README's Install)
#   make p1-numpy QUICK=1      one milestone (QUICK=1: seconds on tiny data)
#   make p2-cnn DEVICE=cuda    on a GPU (auto = cuda, then mps, then cpu)
#   make p1-train DATA_DIR=/datasets   where the datasets live (default ./data)
#   make p2-cnn NPROC=2        data-parallel training: torchrun --standalone --nproc_per_node=2
#   make exercise M=p1-numpy   turn a milestone's reference answers into stubs; make check M=p1-numpy grades them
#   make p1-numpy RUN=momentum0 ARGS='--momentum 0'   a named run in runs/p1-numpy/momentum0/
#   make compare M=p1-numpy    every run of a milestone side by side: a table and runs/p1-numpy/compare.png

SHELL   := /bin/bash
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.ml60-installed
DEPLOY_STAMP := $(VENV)/.ml60-deploy-installed
TEST_STAMP   := $(VENV)/.ml60-test-installed
DEVICE  ?= auto
QUICK   ?= 0
ARGS    ?=
PYTEST_ARGS ?=
M       ?=
FORCE   ?= 0
FORCE_FLAG := $(if $(filter 1 yes true on,$(FORCE)),--force)

export ML60_DEVICE := $(DEVICE)
export QUICK
NPROC   ?= 1
export ML60_NPROC := $(NPROC)
# RUN=name: a named run, kept in runs/<milestone>/<name>/ beside the others (make compare M=... shows them all)
ifdef RUN
export ML60_RUN := $(RUN)
endif
# Only a DATA_DIR that was asked for reaches the code: it also switches on the
# real-data tests, which must then find the data or fail.
ifdef DATA_DIR
export ML60_DATA_DIR := $(abspath $(DATA_DIR))
endif

# REAL_TOOLS=1: the tests that drive real programs beside Python (Debian's chromium and chromium-driver
# for the browser tests, prometheus and promtool for the alert rules) must find them or fail, as
# DATA_DIR does for the data; `make test REAL_TOOLS=1` (what CI runs) installs them first when missing.
SYSTEM_PACKAGES := chromium chromium-driver prometheus
SYSTEM_TOOLS    := chromium chromedriver prometheus promtool
ifdef REAL_TOOLS
export ML60_REAL_TOOLS := 1
endif

MILESTONES := $(shell $(PYTHON) -m ml60 ids 2>/dev/null)
QUICK_FLAG := $(if $(filter 1 yes true on,$(QUICK)),--quick)

.DEFAULT_GOAL := help
.PHONY: help install quickstart test test-fast audit-tolerances system-tools progress compare under-the-hood distill exercises exercise check solution diff mutate phase1 phase2 phase3 bench bench-p1 bench-p2 bench-tta p3-load clean $(MILESTONES)

help:
	@$(PYTHON) -m ml60 help

# The venv is created when missing and the project (re)installed whenever
# pyproject.toml changes.  pip takes torch from the local wheel cache when the
# machine has one, otherwise from the package index.
# CPU=1: torch and torchvision from PyTorch's CPU-only index first, so the project's install finds them
# already there and fetches no CUDA wheels (about 1 GB in all instead of about 6 GB; the README's Install
# section has the measured sizes). Start from a new .venv when the old one holds the CUDA build.
CPU ?= 0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
CPU_ONLY := $(filter 1 yes true on,$(CPU))

$(STAMP): pyproject.toml
	@test -x $(PY) || { echo "creating $(VENV) with $$($(PYTHON) --version)"; $(PYTHON) -m venv $(VENV); }
	$(if $(CPU_ONLY),$(PY) -m pip install --disable-pip-version-check -q torch torchvision --index-url $(TORCH_CPU_INDEX))
	$(PY) -m pip install --disable-pip-version-check -q -e .
	@$(PY) -m ml60 install-check
	@touch $(STAMP)

# Tools beside the runtime (pyproject's extras): p3-deploy's validators, and the test tools.
$(DEPLOY_STAMP): $(STAMP)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[deploy]'
	@touch $(DEPLOY_STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test]'
	@touch $(DEPLOY_STAMP) $(TEST_STAMP)

install: $(STAMP)

quickstart: $(DEPLOY_STAMP)
	$(PY) -m ml60 quickstart

# Two worker processes share the cores, whole test files each (tests/conftest.py gives every worker its
# share of threads and hands out the longest files first); TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
TEST_PARALLEL := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: $(TEST_STAMP) $(if $(REAL_TOOLS),system-tools)
	$(PY) -m pytest $(TEST_PARALLEL) $(PYTEST_ARGS)

# For a learner who changed shared code: the unit tests and every exercise check, no training run.
test-fast: $(TEST_STAMP)
	$(PY) -m pytest $(TEST_PARALLEL) -m "not slow and not real_data" $(PYTEST_ARGS)

# The browser and Prometheus, from Debian (apt-get needs root; otherwise it says what to run).
system-tools:
	@missing=$$(for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || echo $$tool; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	echo "installing $(SYSTEM_PACKAGES) (missing: $$(echo $$missing))"; \
	if [ "$$(id -u)" != 0 ]; then echo "run as root: apt-get install -y $(SYSTEM_PACKAGES)"; exit 1; fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get install -y -q --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null \
	  || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; }

progress: $(STAMP)
	@$(PY) -m ml60 progress

compare: $(STAMP)
	@test -n "$(M)" || { echo "name the milestone: make compare M=p1-numpy"; exit 2; }
	@$(PY) -m ml60 compare $(M)

# Exercises: M= names a milestone (p1-numpy) or one exercise (p1-numpy.3).
exercises: $(STAMP)
	@$(PY) -m ml60 exercises $(or $(M),all)

# Every check proven able to fail: each exercise's stub and shipped wrong answers are mutants it must kill.
# Then mutmut's own mutants of the modules whose correctness the course teaches (tens of minutes; M= skips them).
mutate: $(TEST_STAMP)
	@$(PY) -m ml60 mutate $(or $(M),all)
	@$(if $(M),true,$(PY) -m ml60.mutation)

# The maintainer's audit of every float tolerance: the margin each leaves at 1, 2 and 4 threads and with
# deterministic algorithms (tools/tolerance_audit; 23 min on 2 cores with ARGS=--jobs 2; DATA_DIR= adds the real-data tests).
audit-tolerances: $(TEST_STAMP)
	$(PY) -m tools.tolerance_audit $(ARGS)

exercise check solution diff: $(STAMP)
	@test -n "$(M)" || { echo "name the milestone: make $@ M=p1-numpy (make exercises lists them)"; exit 2; }
	@$(PY) -m ml60 $@ $(M) $(FORCE_FLAG)

$(MILESTONES): $(STAMP)
	$(PY) -m ml60 run $@ $(QUICK_FLAG) $(ARGS)

p3-deploy phase3: $(DEPLOY_STAMP)

phase1 phase2 phase3: $(STAMP)
	$(PY) -m ml60 phase $(subst phase,,$@) $(QUICK_FLAG) $(ARGS)

# Phase 2's "under the hood" lesson: LR range test, optimisers, warm-up, BatchNorm (about 10 minutes on 2 cores).
under-the-hood: $(STAMP)
	$(PY) -m phase2_depth.under_the_hood $(QUICK_FLAG) $(ARGS)

# Phase 3's compression lesson beside INT8: the narrow CNN distilled from p2-cnn's model (after make p2-cnn).
distill: $(STAMP)
	$(PY) -m phase3_production.distill $(QUICK_FLAG) $(ARGS)

# Benchmarks measure speed side by side and write benchmarks/results/<name>.json.
bench-p1: $(STAMP)
	$(PY) benchmarks/bench_p1.py $(QUICK_FLAG) $(ARGS)

bench-p2: $(STAMP)
	$(PY) benchmarks/bench_p2.py $(QUICK_FLAG) $(ARGS)

# Time to accuracy (MNIST MLP to 98%, or ARGS='--task cifar-cnn': the CNN to 90%); meant for DEVICE=cuda.
bench-tta: $(STAMP)
	$(PY) benchmarks/bench_tta.py $(QUICK_FLAG) $(ARGS)

# The service under load, micro-batching on and off side by side (after p3-onnx).
p3-load: $(STAMP)
	$(PY) phase3_production/load_test.py $(QUICK_FLAG) $(ARGS)

bench: $(STAMP)
	@ls benchmarks/bench_*.py >/dev/null 2>&1 || { echo "no benchmark scripts yet in benchmarks/"; exit 2; }
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(PY) $$script $(QUICK_FLAG) || exit 1; done

clean:
	rm -rf runs .pytest_cache
