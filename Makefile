# Entry points: `make demo` runs the workflow on the built-in synthetic dataset,
# `make test` runs the test suite, `make lint` checks formatting and lint. Each creates .venv
# and installs on first use.

PYTHON ?= python3
# The CPU wheel of torch 2.13.0; set TORCH_SPEC="torch" on a GPU machine to let
# pip choose a CUDA build.
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2
SNAKEMAKE ?= $(BIN)/snakemake
# `make report`: the report of CONFIGFILE's results, written to REPORT.
CONFIGFILE ?= config/config.yaml
REPORT ?= results/report.html
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo report test test-fast lint bench gpu-check clean-demo

# Every target that needs the environment installs it once (the stamp); `make install` always
# runs the install, so `make install TORCH_SPEC=...` also acts on an existing .venv.
$(STAMP): pyproject.toml
	$(MAKE) --no-print-directory install

install:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@# nlb-tools 0.0.4 pins pandas<=1.3.4 (no Python 3.11 wheel); it runs fine on pandas 2.
	$(BIN)/python -m pip install --quiet --no-deps nlb-tools==0.0.4
	touch $(STAMP)

demo: $(STAMP)
	$(SNAKEMAKE) --cores $(CORES) --configfile config/config.yaml
	$(MAKE) --no-print-directory report CONFIGFILE=config/config.yaml REPORT=results/report.html
	@echo
	@echo "Done. Report: results/report.html; table of runs: results/synthetic/val/summary.tsv;"
	@echo "figures: results/synthetic/val/figures/; NWB files: resources/data/synthetic/."

# `snakemake --report` writes its file in place, so a kill left a half-written report at the final
# path. This writes a temporary file beside it, renamed when complete; its name follows
# lfads.infra.io.atomic_path's (host and shell process), so the workflow's next run removes one
# left by a kill.
report: $(STAMP)
	@mkdir -p "$(dir $(REPORT))"
	tmp="$(dir $(REPORT)).$(basename $(notdir $(REPORT))).tmp.$$(uname -n)@$$$$.make$(suffix $(REPORT))"; \
	$(SNAKEMAKE) --cores $(CORES) --configfile $(CONFIGFILE) --report "$$tmp" \
		&& mv -f "$$tmp" "$(REPORT)" || { status=$$?; rm -f "$$tmp"; exit $$status; }

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not slurm" --durations=10

# The speed benchmark (about 5 minutes; not part of the tests): prints a table, writes results/bench/bench.json.
bench: $(STAMP)
	$(BIN)/python -m lfads.bench

# The GPU check (CUDA only; about 8 minutes on one GPU; exits 3 without a GPU): equivalence of the
# paths on CUDA, checkpoint portability, timings; writes results/gpu_check/gpu_check.json. Options:
# make gpu-check GPU_CHECK_OPTIONS="--skip-compiled --threads 4".
gpu-check: $(STAMP)
	$(BIN)/python -m lfads.bench.gpu_check $(GPU_CHECK_OPTIONS)

# Formatting and lint checks (rules in pyproject.toml); `ruff format .` and `snakefmt workflow/` fix
# the formatting.
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check workflow/
	$(BIN)/snakemake --lint --configfile config/config.yaml
