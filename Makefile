# Two commands set everything up: `make demo` and `make test` (see README.md).
# Both create .venv from requirements*.txt and node_modules from package-lock.json when missing.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
VENV_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20

.PHONY: demo test lint unit bench bench-full reliability-doc security-doc system-deps clean

$(VENV_STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# iptables proves the metadata firewall inside a network namespace; only root can install it,
# and the tests print why they skip where it cannot be had.
system-deps:
	@if ! command -v iptables >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing iptables (firewall tests)"; \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables >/dev/null; \
	fi

demo: $(VENV_STAMP) $(NODE_STAMP)
	$(BIN)/python -m annex_sandbox.demo

lint: $(VENV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy condor_annex annex_sandbox stacks app.py
	@# each function is its own top-level `handler` module, as Lambda imports it
	for fn in lambda/*/; do $(BIN)/mypy $$fn || exit 1; done

# Three workers on two cores: many tests wait on subprocesses, daemons and polling, and a third
# worker fills that idle time (measured in docs/TESTING.md). `make lint` runs beside the suite:
# mypy's first pass over the CDK's typed modules takes ~2 min of one core on a fresh clone.
# Either failing fails `make test`; the lint output follows the suite's.
test: $(VENV_STAMP) $(NODE_STAMP) system-deps
	@lint_log=$$(mktemp); \
	$(MAKE) --no-print-directory lint > $$lint_log 2>&1 & lint_pid=$$!; \
	$(BIN)/pytest -n 3 --dist loadfile; suite=$$?; \
	wait $$lint_pid; linted=$$?; \
	cat $$lint_log; rm -f $$lint_log; \
	if [ $$linted -ne 0 ]; then echo "make test: make lint failed (output above)"; fi; \
	exit $$(( suite || linted ))

unit: $(VENV_STAMP)
	$(BIN)/pytest tests/unit

# Quick sizes (100-instance scale run; a few minutes on 2 CPUs), then docs/PERFORMANCE.md and
# docs/PERFORMANCE.json are rewritten from this run, naming its commit.
bench: $(VENV_STAMP) $(NODE_STAMP)
	$(BIN)/python -m bench --quick --publish

# Full sizes (1,000-instance scale run; about 25 minutes on 2 CPUs).
bench-full: $(VENV_STAMP) $(NODE_STAMP)
	$(BIN)/python -m bench --publish

# docs/RELIABILITY.md (and the raw claims, docs/RELIABILITY.json) are generated from the claims
# the reliability tests asserted; tests/unit/test_reliability_doc.py checks the page against them.
reliability-doc: $(VENV_STAMP) $(NODE_STAMP) system-deps
	$(BIN)/pytest -n 3 --dist loadfile tests/reliability tests/integration/test_setup_verbs.py \
		--reliability-doc docs/RELIABILITY.md

# docs/SECURITY.md's trust-model table, asked of the IAM engine for the deployed setup;
# tests/integration/test_security_doc.py checks the page against it.
security-doc: $(VENV_STAMP) $(NODE_STAMP)
	ANNEX_WRITE_SECURITY_DOC=1 $(BIN)/pytest -q -p no:cacheprovider tests/integration/test_security_doc.py

clean:
	rm -rf $(VENV) node_modules cdk.out .pytest_cache .mypy_cache .ruff_cache
