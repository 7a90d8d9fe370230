from lfads.logs import log_to_file
from lfads.sources import materialise

with log_to_file(snakemake.log[0]):
    materialise(snakemake.params.source, snakemake.params.data_dir, snakemake.output.marker)
