# raygen: `make demo` (set up + the main job), `make test` (set up + lint + the whole suite),
# the suite's tiers `make test-fast` / `test-ray` / `test-slow` / `test-faults` / `test-cluster` /
# `test-e2e` (lint + one tier each), `make bench`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The CPU build of torch is installed first so that pip never pulls a multi-GB CUDA build to
# satisfy the torch range in pyproject.toml. Override on a GPU machine: make TORCH_SPEC=torch test
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test test-fast test-ray test-slow test-faults test-cluster test-e2e lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: setup
	$(BIN)/raygen run jobs/quickstart.yaml
	@echo "open runs/quickstart/report.md (the study's table and plots, with links to each stage's report)"

lint: setup
	$(BIN)/ruff check raygen tests benchmarks

# Tests without Ray run in two pytest processes (-n 2); Ray's tests run one at a time: two local
# Rays on 2 cores overload each other (measured: no faster in all, and a raylet missed Ray's fixed
# 30 s start-up limit), so `make test` is every Ray-free test in parallel, then the Ray ones.
PYTEST := $(BIN)/python -m pytest -q

test: lint
	$(PYTEST) -n 2 --durations=5 -m "not ray"
	$(PYTEST) --durations=15 -m ray

# The tiers split the whole suite by the markers tests/conftest.py applies (`ray`: starts Ray;
# `slow`: fault injection, multi-node, job submit, end to end, long training); together they are
# `make test`. test-fast: no Ray, under a minute on a quiet 2-core machine; test-ray: quick Ray
# tests; test-slow: the rest, also by kind: test-faults, test-cluster, test-e2e.
test-fast: lint
	$(PYTEST) -n 2 -m "not ray and not slow"

test-ray: lint
	$(PYTEST) --durations=10 -m "ray and not slow"

test-slow: lint
	$(PYTEST) --durations=10 -m slow

test-faults test-cluster test-e2e: lint
	$(PYTEST) --durations=10 -m $(@:test-%=%)

bench: setup
	for b in benchmarks/*.py; do $(BIN)/python $$b --quick || exit 1; done

clean:
	rm -rf runs benchmarks/results .pytest_cache
