# Config validation and path helpers shared by every rule file. The modules imported here import
# no torch, pandas, h5py, dandi or nlb_tools, so parsing the workflow is quick
# (tests/test_workflow.py checks it; the hyperparameter check below imports the user's plugins).
from pathlib import Path

from snakemake.exceptions import WorkflowError

from lfads.data.fetch import nwb_paths, source_kind, truth_paths
from lfads.data.layouts import BIN_WIDTHS_MS, group_name
from lfads.evaluation.outputs import figures_for
from lfads.infra.config import ConfigError, validate_config
from lfads.search.space import expand_search

try:
    config = validate_config(config, Path(workflow.basedir) / "schemas" / "config.schema.yaml")
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
if MODEL_BIN not in config["bin_widths"]:
    raise WorkflowError(
        f"model.bin_width: {MODEL_BIN} is not one of bin_widths {config['bin_widths']}; "
        "add it to bin_widths or choose one of them."
    )
PREPARED_FOR_MODEL = f"{RESULTS}/prepared_{MODEL_BIN}ms.h5"
TARGETS_FOR_MODEL = [f"{RESULTS}/targets_{MODEL_BIN}ms.h5"] if PHASE == "val" else []
NLB_GROUP = group_name(LAYOUT, MODEL_BIN)
RUNS_DIR = f"{RESULTS}/runs"
CHECKPOINTS_DIR = f"{RESULTS}/checkpoints"
try:
    RUNS = {run.name: run.params for run in expand_search(config["search"])}
except ValueError as error:
    raise WorkflowError(str(error)) from None


def run_hparams(run):
    """Plain hyperparameters of one run: the configfile's base values, then the run's searched ones."""
    return {**config["model"]["hparams"], **RUNS[run]}


def _check_hparams():
    """Build every run's hyperparameters now, so a bad value stops the workflow before any job."""
    from lfads.model.hparams import HParams

    for run in RUNS:
        try:
            HParams.from_dict(run_hparams(run))
        except (TypeError, ValueError) as error:
            raise WorkflowError(f"model.hparams / search (run {run}): {error}") from None


_check_hparams()
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
