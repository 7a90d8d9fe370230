from pathlib import Path

from lfads.evaluation.submission import submitted_run, write_submission
from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    run = submitted_run(snakemake.input.summary, snakemake.params.run_dir)
    write_submission(
        snakemake.input.prepared,
        Path(snakemake.params.run_dir) / run / "inferred.h5",
        snakemake.output[0],
    )
