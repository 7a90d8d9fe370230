# Config validation and path helpers shared by every rule file.
from pathlib import Path

from snakemake.exceptions import WorkflowError

from lfads.config import ConfigError, validate_config
from lfads.sources import nwb_paths, source_kind, truth_paths

try:
    config = validate_config(
        config, Path(workflow.basedir) / "schemas" / "config.schema.yaml"
    )
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
    bin="5|20",


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
