from pathlib import Path

from lfads.evaluation.ensemble import write_ensemble
from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    run_dir = Path(snakemake.params.run_dir)
    write_ensemble(
        snakemake.input.prepared,
        {run: run_dir / run for run in snakemake.params.runs},
        snakemake.params.top_k,
        Path(snakemake.output.inferred).parent,
    )
