from lfads.evaluation.nwb_export import copy_best_nwb
from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    nwb = dict(zip(snakemake.params.runs, snakemake.input.nwb, strict=True))
    copy_best_nwb(snakemake.input.summary, nwb, snakemake.output[0])
