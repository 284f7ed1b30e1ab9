# Two commands for a fresh clone: `make report` (the whole pipeline, ending in
# results/report/index.html: Snakemake's target rule `report`) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Use the mirror beside the checkout when there is one (offline machines, CI).
export LICM_DATA_MIRROR ?= $(if $(wildcard ../shared/data/mnist),$(abspath ../shared/data),)
CORES ?= all

.PHONY: install test report lock clean-venv wheels

$(BIN)/licm: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c requirements.lock -e '.[workflow,dev]'
	touch $@

install: $(BIN)/licm

# Two workers, one test module each at a time (tests/conftest.py: longest first): most tests wait on
# subprocesses (Snakemake, DVC, SLURM, sshd) and leave a core idle.
# As root it first installs the Debian packages the tests start (.ci/debian-packages: the one list);
# otherwise it says which tests skip and the command that enables them.
TEST_WORKERS ?= 2
test: install
	.ci/debian-packages
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20

# PROFILE unset: params.yaml's `profile:` (auto = paper with a CUDA GPU, quick without);
# PROFILE=paper|paper_main|quick|smoke|auto forces one, e.g. `make report PROFILE=smoke`.
PROFILE ?=
PROFILES := paper paper_main quick smoke auto
ifneq ($(filter-out $(PROFILES),$(PROFILE)),)
$(error make report: PROFILE=$(PROFILE) is not a profile; expected one of: $(PROFILES))
endif
report: install
	@PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -c "import yaml; from licm import config as c; \
	asked = '$(PROFILE)' or yaml.safe_load(open('params.yaml'))['profile']; p = c.resolve_profile(asked); \
	why = 'CUDA GPU found' if p == 'paper' else 'no CUDA GPU'; \
	print(f'make report: profile {p} (' + (why if asked == 'auto' else 'asked for') + '; force one with make report PROFILE=paper|quick|smoke)')"
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --workflow-profile workflow/profiles/default --cores $(CORES) report \
	  $(if $(PROFILE),--config profile=$(PROFILE),)
	@echo "make report: open file://$(abspath results/report/index.html)"

lock: install
	( sed -n '1,3p' requirements.lock; $(BIN)/pip freeze --exclude-editable ) > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean-venv:
	rm -rf $(VENV)

# A machine without internet (README "Running on a GPU machine"): the wheels Snakemake and the licm jobs
# need beyond torch, for the target's Python and platform (PY_VERSION=3.x, PLATFORM=pip platform tag).
PY_VERSION ?= $(shell $(BIN)/python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null)
wheels: install
	$(BIN)/python workflow/scripts/wheels.py download --out wheels --python-version $(PY_VERSION) \
	  $(if $(PLATFORM),--platform $(PLATFORM),)

# The CPU campaign (workflow/scripts/campaign.py): the main experiment's ten seeds at the papers' scale
# in the background, from a clone outside the work tree; resumes wherever it was killed. Call
# `make campaign` again whenever it is not running (and after committing a faster engine: new seeds
# start at the new HEAD once its equivalence tests pass).
.PHONY: campaign campaign-status campaign-stop
campaign: install
	$(PYTHON) workflow/scripts/campaign.py start --repo $(CURDIR)
campaign-status:
	@$(PYTHON) workflow/scripts/campaign.py status --repo $(CURDIR)
campaign-stop:
	$(PYTHON) workflow/scripts/campaign.py stop
