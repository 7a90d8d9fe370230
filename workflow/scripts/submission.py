from pathlib import Path

from lfads.evaluation.aggregate import best_run
from lfads.evaluation.submission import write_submission
from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    run = best_run(snakemake.input.summary)
    write_submission(
        snakemake.input.prepared,
        Path(snakemake.params.run_dir) / run / "inferred.h5",
        snakemake.output[0],
    )
