# Two commands for a fresh clone: `make report` (the whole pipeline) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Use the mirror beside the checkout when there is one (offline machines, CI).
export LICM_DATA_MIRROR ?= $(if $(wildcard ../shared/data/mnist),$(abspath ../shared/data),)
CORES ?= all

.PHONY: install test report lock clean-venv

$(BIN)/licm: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c requirements.lock -e '.[workflow,dev]'
	touch $@

install: $(BIN)/licm

test: install
	$(BIN)/python -m pytest -q

report: install
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES) report

lock: install
	( sed -n '1,3p' requirements.lock; $(BIN)/pip freeze --exclude-editable ) > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean-venv:
	rm -rf $(VENV)
