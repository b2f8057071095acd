# The two quickstart commands are `make repro` and `make test`; both build the venv from the lock first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro test test-fast lock env-check clean-venv

setup: $(VENV)/.installed

# Reinstall whenever the lock or the package metadata changes.
$(VENV)/.installed: environment.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --require-hashes --no-deps -r environment.lock
	$(BIN)/python -m pip install -qq --no-deps --no-build-isolation -e .
	touch $@

repro: setup            ## run the whole paper pipeline on the embedded default
	dvc repro

test: setup             ## the full test suite, slow tests included (what CI runs)
	pytest -n 2 --dist loadfile --timeout 1200

test-fast: setup        ## the quick inner loop: everything but the slow tests
	pytest -n 2 --dist loadfile -m "not slow"

lock:                   ## re-resolve pyproject.toml into environment.lock (run after editing dependencies)
	$(BIN)/usam env lock

env-check: setup
	usam env check

clean-venv:
	rm -rf $(VENV)
