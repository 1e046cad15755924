# The two commands a newcomer needs (see README):
#   make demo   installs everything into .venv and runs the demo end to end
#   make test   installs everything into .venv and runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test test-all lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch is pinned: the CPU build of 2.13.0, never a multi-GB CUDA download.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: install
	$(BIN)/python -m inferstack.examples.demo

test: install
	$(BIN)/python -m pytest -q -m "not slow"

test-all: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy inferstack runtime modeltools components

# The serving benchmark against its peers (a few minutes); BENCH_ARGS="--full" for the full run.
bench: install
	$(BIN)/inferstack bench $(BENCH_ARGS)

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache

# Offline plan of every stack (plan/<stack>.json, .md, k8s/), the check CI runs, and the security scan.
STACKS := $(patsubst stacks/Pulumi.%.yaml,%,$(wildcard stacks/Pulumi.*.yaml))
CHECKOV_VENV ?= .venv-checkov

.PHONY: plan plan-check scan

plan: install
	$(BIN)/inferstack plan $(addprefix --stack ,$(STACKS))

plan-check: install
	$(BIN)/inferstack plan --check $(addprefix --stack ,$(STACKS))

# checkov lives in its own virtual environment: its pins conflict with ours. Reports land in build/.
DOCKERFILES := $(filter-out %.dockerignore,$(wildcard runtime/Dockerfile*))
CHECKOV := $(CHECKOV_VENV)/bin/checkov --compact --skip-download -o json

scan: install
	test -x $(CHECKOV_VENV)/bin/checkov || ($(PYTHON) -m venv $(CHECKOV_VENV) && $(CHECKOV_VENV)/bin/pip install -q checkov)
	mkdir -p build
	$(CHECKOV) -d plan --framework kubernetes > build/checkov-k8s.json || true
	$(if $(DOCKERFILES),$(CHECKOV) $(addprefix -f ,$(DOCKERFILES)) --framework dockerfile > build/checkov-docker.json || true)
	status=0; for r in build/checkov-k8s.json $(if $(DOCKERFILES),build/checkov-docker.json); do \
	  $(BIN)/python -m inferstack.plan.scan $$r || status=1; done; exit $$status
