from lfads.evaluation.figures import pbt_progress
from lfads.infra.logs import log_to_file
from lfads.search.pbt import read_curves, read_history

with log_to_file(snakemake.log[0]):
    pbt_progress(
        read_history(snakemake.input.history),
        read_curves(snakemake.input.curves),
        snakemake.output[0],
    )
