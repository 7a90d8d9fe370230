# Config validation and path helpers shared by every rule file. The modules imported here import
# no torch, pandas, h5py, dandi, nlb_tools or user plugins, so parsing the workflow is quick and
# runs no plugin code (tests/test_workflow.py checks it).
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from lfads.data.fetch import (
    describe_source,
    FetchedFileError,
    check_fetched,
    fetch_jobs,
    job_source,
    marker_path,
    nwb_paths,
    source_kind,
    truth_paths,
)
from lfads.data.layouts import BIN_WIDTHS_MS, group_name
from lfads.evaluation.ensemble import ensemble_name
from lfads.evaluation.outputs import figures_for
from lfads.config import (
    ConfigError,
    check_config,
    check_configfiles,
    check_output_paths,
    validate_config,
)
from lfads.infra.io import remove_stale_temporaries
from lfads.search.pbt import generation_name, read_plan
from lfads.search.space import run_hparams as merged_hparams
from lfads.training.set_aside import describe_set_aside

try:
    check_configfiles(workflow.configfiles)
    config = validate_config(config, Path(workflow.basedir) / "schemas" / "config.schema.yaml")
    SEARCH = check_config(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None
RUNS = SEARCH.runs  # {run name: its searched hyperparameters}
PACKS = SEARCH.packs  # {pack name: its runs}, trained together by one `train` job
PACK_OF = {run: pack for pack, runs in PACKS.items() for run in runs}
if workflow.is_main_process:
    for note in SEARCH.notes:
        print(note, file=sys.stderr)

DATASET = config["dataset"]
PHASE = config["phase"]
LAYOUT = config["nlb_layout"]
SOURCE = config["source"]
DATA_DIR = f"resources/data/{DATASET}"
RESULTS = f"results/{DATASET}/{PHASE}"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"
NWB = {role: str(path) for role, path in nwb_paths(SOURCE, DATA_DIR).items()}
TRUTH = {role: str(path) for role, path in (truth_paths(SOURCE, DATA_DIR) or {}).items()}
# One fetch job per asset ("train", "test"; "synthetic" for the generator). Its output is a marker
# written once its files are verified; the files themselves are outputs of no rule, so Snakemake
# never deletes a download (lfads/data/fetch.py).
FETCH_JOBS = fetch_jobs(SOURCE)  # {job: the NWB roles it provides}


wildcard_constraints:
    bin="|".join(str(width) for width in BIN_WIDTHS_MS),
    asset="|".join(FETCH_JOBS),


def fetch_markers(*roles):
    """Markers of the fetch jobs that provide the NWB files of `roles` (their truth included)."""
    jobs = [job for job, provides in FETCH_JOBS.items() if set(roles) & set(provides)]
    return [str(marker_path(DATA_DIR, job)) for job in jobs]


def local_source_file(wildcards):
    """A local source's file of one fetch job (an input: replacing the file reruns the check)."""
    return [NWB[wildcards.asset]] if source_kind(SOURCE) == "local" else []


def fetch_params(wildcards):
    return job_source(SOURCE, wildcards.asset, LAYOUT)


def data_outputs():
    bins = config["bin_widths"]
    outputs = expand(f"{RESULTS}/prepared_{{bin}}ms.h5", bin=bins)
    if PHASE == "val":
        outputs += expand(f"{RESULTS}/targets_{{bin}}ms.h5", bin=bins)
    return outputs


# -- runs of the hyperparameter search ---------------------------------------------
MODEL_BIN = config["model"]["bin_width"]
PREPARED_FOR_MODEL = f"{RESULTS}/prepared_{MODEL_BIN}ms.h5"
TARGETS_FOR_MODEL = [f"{RESULTS}/targets_{MODEL_BIN}ms.h5"] if PHASE == "val" else []
NLB_GROUP = group_name(LAYOUT, MODEL_BIN)
RUNS_DIR = f"{RESULTS}/runs"
PACKS_DIR = f"{RESULTS}/packs"
CHECKPOINTS_DIR = f"{RESULTS}/checkpoints"


def run_hparams(run):
    """Plain hyperparameters of one run: the configfile's base values, then the run's searched ones."""
    return merged_hparams(config["model"]["hparams"], RUNS[run])


FIGURES = figures_for(PHASE, LAYOUT, has_truth=bool(TRUTH))


wildcard_constraints:
    run="[^/]+",
    pack=r"pack\d+",


def figure_path(figure):
    return f"{RESULTS}/figures/{figure.name}.png"


def gallery_figures():
    """(title, caption text, PNG) of each figure, in the report's reading order (rule gallery;
    the PBT figure's title and path are in rules/pbt.smk)."""
    figures = [(figure.title, figure.caption, figure_path(figure)) for figure in FIGURES]
    if "pbt" in config["search"]:
        figures.append((PBT_FIGURE_TITLE, "pbt.rst", PBT_FIGURE))
    report_dir = Path(workflow.basedir, "report")
    return [(title, (report_dir / rst).read_text(), png) for title, rst, png in figures]


def final_outputs():
    outputs = [f"{RESULTS}/summary.tsv", f"{RESULTS}/best_rates.nwb"]
    if "pbt" in config["search"]:
        outputs += [PBT_HISTORY, PBT_FIGURE]  # (rules/pbt.smk)
    outputs += [figure_path(figure) for figure in FIGURES]
    outputs.append(f"{RESULTS}/figures.html")  # (the report's thumbnails: rule gallery)
    if PHASE == "test":
        outputs.append(f"{RESULTS}/submission_{DATASET}.h5")
    return outputs


# Every file of every run is a target of the workflow (the Snakefile's first rule): Snakemake
# rebuilds a missing target, but a missing intermediate file counts as fine when the files after
# it exist, so an inferred.h5 lost to a killed forced rerun would otherwise leave it "done".
# What training writes for each run (rule train's pack folder, copied by rule run_files; rule pbt).
TRAIN_FILES = {"model": "model.ckpt", "metrics": "metrics.csv", "hparams": "hparams.yaml"}
RUN_FILES = (
    "model.ckpt",
    "metrics.csv",
    "hparams.yaml",
    "inferred.h5",
    "metrics.json",
    "rates.nwb",
)


# The ensemble of the best runs (`ensemble.top_k`; lfads/evaluation/ensemble.py): a folder of
# runs/ without a model, scored and listed in the summary like a run.
ENSEMBLES = [ensemble_name(config["ensemble"]["top_k"])] if "ensemble" in config else []
MEMBERS_TSV = "members.tsv"  # its members (lfads.formats.runs)
ENSEMBLE_FILES = ("inferred.h5", "metrics.csv", MEMBERS_TSV, "metrics.json")
SUMMARY_ROWS = {**RUNS, **{name: {} for name in ENSEMBLES}}  # {row: its searched values}


def run_outputs():
    return [f"{RUNS_DIR}/{run}/{name}" for run in RUNS for name in RUN_FILES] + [
        f"{RUNS_DIR}/{name}/{file}" for name in ENSEMBLES for file in ENSEMBLE_FILES
    ]


# The paths built from configfile values stay inside resources/ and results/ (checked in the code
# as well as by the schema: an output path outside would be deleted when its job starts), and a
# file that a fetch marker records must still be there.
try:
    check_output_paths(
        [DATA_DIR, RESULTS, *(str(marker_path(DATA_DIR, job)) for job in FETCH_JOBS)]
        + ([] if source_kind(SOURCE) == "local" else [*NWB.values(), *TRUTH.values()])
        + [f"{RUNS_DIR}/{run}" for run in RUNS]
        + [f"{folder}/{pack}" for folder in (PACKS_DIR, CHECKPOINTS_DIR) for pack in PACKS]
        + [f"{RUNS_DIR}/{name}" for name in ENSEMBLES]
    )
    check_fetched(SOURCE, DATA_DIR)
except (ConfigError, FetchedFileError) as error:
    raise WorkflowError(str(error)) from None


# PBT of a population in several packs (pbt_packs.smk): generation g's files.
def pbt_pack_dir(generation, pack):
    return f"{PBT_DIR}/gen{generation_name(int(generation))}/{pack}"


def pbt_plan_file(generation):
    """The plan of `generation` once its checkpoint job has run (raises Snakemake's
    IncompleteCheckpointException before: the DAG is then re-evaluated)."""
    return checkpoints.pbt_plan.get(gen=generation_name(int(generation))).output.plan


def pbt_last_generation():
    """The last generation that trains: the one before the first plan that stops."""
    generation = 0
    while not read_plan(pbt_plan_file(generation + 1)).stop:
        generation += 1
    return generation


def pbt_plan_inputs(wildcards):
    generation = int(wildcards.gen)
    if generation == 0:
        return {}
    return {
        "previous": f"{PBT_DIR}/plan_gen{generation_name(generation - 1)}.json",
        "packs": [pbt_pack_dir(generation - 1, pack) for pack in PBT_PACKS],
    }


def pbt_pack_inputs(wildcards):
    inputs = {"plan": pbt_plan_file(wildcards.gen), "data": PREPARED_FOR_MODEL}
    generation = int(wildcards.gen)
    if generation > 0:  # every pack's end of the previous generation: copies may cross packs
        inputs["previous"] = [pbt_pack_dir(generation - 1, pack) for pack in PBT_PACKS]
    return inputs


def pbt_history_inputs(wildcards):
    last = pbt_last_generation()
    return {
        "plans": [f"{PBT_DIR}/plan_gen{generation_name(g)}.json" for g in range(last + 2)],
        "packs": [  # generation-major (scripts/pbt_history.py)
            pbt_pack_dir(g, pack) for g in range(last + 1) for pack in PBT_PACKS
        ],
    }
