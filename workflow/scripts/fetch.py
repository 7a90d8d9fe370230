from lfads.data.fetch import materialise
from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    materialise(snakemake.params.source, snakemake.params.data_dir, snakemake.output.marker)
