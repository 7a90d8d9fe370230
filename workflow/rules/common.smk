# Config validation and path helpers shared by every rule file. The modules imported here import
# no torch, pandas, h5py, dandi, nlb_tools or user plugins, so parsing the workflow is quick and
# runs no plugin code (tests/test_workflow.py checks it).
from pathlib import Path

from snakemake.exceptions import WorkflowError

from lfads.data.fetch import nwb_paths, source_kind, truth_paths
from lfads.data.layouts import BIN_WIDTHS_MS, group_name
from lfads.evaluation.outputs import figures_for
from lfads.infra.config import ConfigError, check_config, validate_config
from lfads.search.space import run_hparams as merged_hparams

try:
    config = validate_config(config, Path(workflow.basedir) / "schemas" / "config.schema.yaml")
    RUNS = check_config(config)  # {run name: its searched hyperparameters}
except ConfigError as error:
    raise WorkflowError(str(error)) from None

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
FETCH_MARKER = f"{DATA_DIR}/fetched.json"


wildcard_constraints:
    bin="|".join(str(width) for width in BIN_WIDTHS_MS),


def fetched_files():
    """Files the fetch rule writes (a local source is only verified, not copied)."""
    if source_kind(SOURCE) == "local":
        return []
    return list(NWB.values()) + list(TRUTH.values())


def local_source_files():
    return list(NWB.values()) if source_kind(SOURCE) == "local" else []


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
CHECKPOINTS_DIR = f"{RESULTS}/checkpoints"


def run_hparams(run):
    """Plain hyperparameters of one run: the configfile's base values, then the run's searched ones."""
    return merged_hparams(config["model"]["hparams"], RUNS[run])


FIGURES = figures_for(PHASE, LAYOUT, has_truth=bool(TRUTH))


wildcard_constraints:
    run="[^/]+",


def figure_path(figure):
    return f"{RESULTS}/figures/{figure.name}.png"


def final_outputs():
    outputs = [f"{RESULTS}/summary.tsv"] + [figure_path(figure) for figure in FIGURES]
    if PHASE == "test":
        outputs.append(f"{RESULTS}/submission_{DATASET}.h5")
    return outputs
