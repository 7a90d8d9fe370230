from lfads.evaluation.aggregate import write_summary
from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    write_summary(snakemake.params.runs, snakemake.params.run_dir, snakemake.output[0])
