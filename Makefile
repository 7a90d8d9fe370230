# Entry points: `make demo` runs the workflow on the built-in synthetic dataset,
# `make test` runs the test suite, `make lint` checks formatting and lint. Each creates .venv
# and installs on first use.

PYTHON ?= python3
# torch 2.13.0 from PyPI: on Linux x86_64 the CUDA build, with its nvidia-* wheels. For the CPU
# build (laptops): TORCH_INDEX=https://download.pytorch.org/whl/cpu. TORCH_SPEC="torch" lets pip
# choose the newest release.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2
SNAKEMAKE ?= $(BIN)/snakemake
# `make report`: the report of CONFIGFILE's results, written to REPORT (default: beside them, as
# results/<dataset>/<phase>/report.html). WORKDIR: the folder that holds results/.
CONFIGFILE ?= config/config.yaml
REPORT ?=
WORKDIR ?= .
export PATH := $(abspath $(BIN)):$(PATH)

# `make submission`: the EvalAI file of the whole benchmark, SUBMISSION: the workflow of each of
# the seven NLB configfiles in PHASE (test: trained on train+val, rates for the test trials; val:
# the same file for EvalAI's validation phase), then their submission files combined and checked
# (lfads combine-submissions; the three MC_Maze scaling datasets are scored together).
NLB_CONFIGFILES := $(addprefix config/,mc_maze.yaml mc_rtt.yaml area2_bump.yaml dmfc_rsg.yaml \
	mc_maze_large.yaml mc_maze_medium.yaml mc_maze_small.yaml)
PHASE ?= test
SUBMISSION ?= results/submission_$(PHASE).h5

.PHONY: install demo report submission test test-fast lint bench bench-packs gpu-check clean-demo full-size

# Every target that needs the environment installs it once (the stamp); `make install` always
# runs the install, so `make install TORCH_SPEC=...` also acts on an existing .venv.
$(STAMP): pyproject.toml
	$(MAKE) --no-print-directory install

install:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e '.[workflow,test]'
	@# nlb-tools 0.0.4 pins pandas<=1.3.4 (no Python 3.11 wheel); it runs fine on pandas 2.
	$(BIN)/python -m pip install --quiet --no-deps nlb-tools==0.0.4
	touch $(STAMP)

demo: $(STAMP)
	$(SNAKEMAKE) --cores $(CORES) --configfile config/config.yaml
	$(MAKE) --no-print-directory report CONFIGFILE=config/config.yaml
	@echo
	@echo "Done. Report: results/synthetic/val/report.html; table of runs: results/synthetic/val/summary.tsv;"
	@echo "figures: results/synthetic/val/figures/; the best run as NWB: results/synthetic/val/best_rates.nwb."

# `snakemake --report` writes its file in place, so a kill left a half-written report at the final
# path. This writes a temporary file beside it, renamed when complete; its name follows
# lfads.infra.io.atomic_path's (host and shell process), so the workflow's next run removes one
# left by a kill.
# A configfile whose workflow has not run gets one line that says to run it first.
report: $(STAMP)
	@results=$$($(BIN)/python -m lfads.config $(CONFIGFILE) $(WORKDIR)) || exit 1; \
	report="$(REPORT)"; report="$${report:-$$results/report.html}"; \
	mkdir -p "$$(dirname "$$report")"; \
	tmp="$$(dirname "$$report")/.$$(basename "$$report" .html).tmp.$$(uname -n)@$$$$.make.html"; \
	$(SNAKEMAKE) --cores $(CORES) --directory $(WORKDIR) --configfile $(CONFIGFILE) --report "$$tmp" \
		&& mv -f "$$tmp" "$$report" && echo "wrote $$report" \
		|| { status=$$?; rm -f "$$tmp"; exit $$status; }

# Each configfile's dataset is its file name (tests/test_config.py checks it).
submission: $(STAMP)
	set -e; files=""; \
	for configfile in $(NLB_CONFIGFILES); do \
		dataset=$$(basename $$configfile .yaml); \
		target=results/$$dataset/$(PHASE)/submission_$$dataset.h5; \
		$(SNAKEMAKE) --cores $(CORES) --configfile $$configfile --config phase=$(PHASE) -- $$target; \
		files="$$files $$target"; \
	done; \
	$(BIN)/python -m lfads combine-submissions --whole-benchmark --out $(SUBMISSION) $$files

# Two workers, one test file each at a time (module fixtures are built once): the SLURM tests,
# which mostly wait on the cluster, run beside the others (first: tests/conftest.py, FIRST).
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=25

# The tests not marked slow on both cores (80-90 s on 2 cores; about 145 s of CPU).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not slow and not slurm" --durations=10

# Each NLB layout at its real size and 5 ms bins on the built-in synthetic source: prepare, targets,
# 20 training epochs and infer; prints the wall time and peak memory of each step, writes
# results/full_size/full_size.json (not part of the tests; about an hour on 2 CPU cores).
# FULL_SIZE_OPTIONS="--layouts mc_rtt --epochs 5" runs less.
full-size: $(STAMP)
	$(BIN)/python -m bench.full_size --cores $(CORES) $(FULL_SIZE_OPTIONS)

# The speed benchmark (about 5 minutes; not part of the tests): prints a table, writes results/bench/bench.json.
bench: $(STAMP)
	$(BIN)/python -m bench

# Packs of 1, 2, 4, 8 and 16 members beside the same members trained one process after another
# (about 15 minutes on 2 CPU cores): prints a table, writes results/bench/packs.json. PACKS=1,4
# for fewer.
PACKS ?= 1,2,4,8,16
bench-packs: $(STAMP)
	$(BIN)/python -m bench --packs $(PACKS) --epochs 5

# The GPU check (CUDA only; about 8 minutes on one GPU; exits 3 without a GPU): equivalence of the
# paths on CUDA, checkpoint portability, timings; writes results/gpu_check/gpu_check.json. Options:
# make gpu-check GPU_CHECK_OPTIONS="--skip-compiled --threads 4".
gpu-check: $(STAMP)
	$(BIN)/python -m bench.gpu_check $(GPU_CHECK_OPTIONS)

# Formatting and lint checks (rules in pyproject.toml); `ruff format .` and `snakefmt workflow/` fix
# the formatting.
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check workflow/
	for configfile in config/*.yaml; do $(BIN)/snakemake --lint --configfile $$configfile || exit 1; done
