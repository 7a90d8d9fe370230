from lfads.evaluation.nwb_export import copy_best_nwb
from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    copy_best_nwb(snakemake.input.summary, snakemake.params.run_dir, snakemake.output[0])
