from lfads.evaluation.nwb_export import export_nwb
from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    export_nwb(
        snakemake.input.prepared,
        snakemake.input.inferred,
        snakemake.params.nwb,
        snakemake.output[0],
        run_name=snakemake.wildcards.run,
        source=snakemake.params.source,
    )
