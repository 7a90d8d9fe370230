from lfads.evaluation.report_table import write_gallery
from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    write_gallery(snakemake.params.figures, snakemake.output[0])
