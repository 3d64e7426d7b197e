# Two commands do all set-up on a fresh machine:
#   make demo   - builds .venv, then runs the whole data path locally for 20 s
#   make test   - builds .venv with the test tools, then runs make lint and the test suite
#   make lint   - ruff over the repository, mypy --strict over the sensorwire package, bench/ and tests/
#   make bench  - adds the peers' client libraries, then runs the comparison (BENCH_ARGS=--quick)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench venv clean lint sysdeps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/sensorwire demo

# System tools some tests need (faketime for the clock tests). Installed with apt-get
# when missing and running as root; otherwise those tests skip and say why.
SYSDEPS := faketime
sysdeps:
	@missing=""; for t in $(SYSDEPS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing"; \
	    apt-get install -y -q $$missing >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null; }; \
	  else echo "note: missing$$missing: the tests that need them will be skipped"; fi; \
	fi

# mypy cannot follow pyproject's package-dir mapping (sensorwire.agent is in agent/), so it
# checks a tree of symlinks laid out as the installed package, made anew on every run:
# build/typecheck/sensorwire/ holds links to sensorwire/*, agent/, collector/ and proto/.
# tests/ is no package: its modules import the helpers beside them as top-level modules
# (`from support import wait_until`; pytest's pythonpath = tests). Those helpers are linked
# into build/typecheck/test-helpers/, a second mypy path (a folder name no import can spell),
# and the test modules and conftest.py files are passed as files under
# --explicit-package-bases, which names them from the repository root
# (tests.collector.alerting.test_end_to_end): modules of the same name in two folders do
# not clash. One run checks the package, bench/ and tests/ together; as mypy takes either
# packages (-p) or files, the package is given as its folder of links (the same modules).
# Its messages are given back with the repository's paths (agent/runtime.py, not the link).
TYPECHECK := build/typecheck
TEST_MODULES = $(sort $(shell find tests -name 'test_*.py' -o -name conftest.py))
TEST_HELPERS = $(filter-out tests/test_%.py tests/conftest.py,$(wildcard tests/*.py))
lint: $(STAMP)
	$(BIN)/ruff check .
	@rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/sensorwire $(TYPECHECK)/test-helpers
	@ln -s $(CURDIR)/sensorwire/* $(TYPECHECK)/sensorwire/
	@ln -s $(CURDIR)/agent $(CURDIR)/collector $(CURDIR)/proto $(TYPECHECK)/sensorwire/
	@ln -s $(addprefix $(CURDIR)/,$(TEST_HELPERS)) $(TYPECHECK)/test-helpers/
	@echo "MYPYPATH=$(TYPECHECK):$(TYPECHECK)/test-helpers $(BIN)/mypy --cache-dir build/mypy-cache" \
	  "--explicit-package-bases $(TYPECHECK)/sensorwire bench \$$(find tests -name 'test_*.py' -o -name conftest.py)"
	@MYPYPATH=$(TYPECHECK):$(TYPECHECK)/test-helpers $(BIN)/mypy --cache-dir build/mypy-cache \
	  --explicit-package-bases $(TYPECHECK)/sensorwire bench $(TEST_MODULES) >$(TYPECHECK)/mypy.out; rc=$$?; \
	  sed -E 's#^$(TYPECHECK)/sensorwire/(agent|collector|proto)/#\1/#; s#^$(TYPECHECK)/test-helpers/#tests/#; s#^$(TYPECHECK)/##' \
	    $(TYPECHECK)/mypy.out; exit $$rc

test: $(STAMP) sysdeps lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) sensorwire-demo build *.egg-info
