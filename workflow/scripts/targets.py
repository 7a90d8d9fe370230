from lfads.data.targets import write_targets
from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    write_targets(
        snakemake.params.train,
        snakemake.output[0],
        nlb_layout=snakemake.params.layout,
        bin_width_ms=int(snakemake.wildcards.bin),
    )
