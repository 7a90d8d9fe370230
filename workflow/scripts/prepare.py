from lfads.data.prepare import prepare
from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    prepare(
        snakemake.params.train,
        snakemake.params.test,
        snakemake.output[0],
        nlb_layout=snakemake.params.layout,
        bin_width_ms=int(snakemake.wildcards.bin),
        phase=snakemake.params.phase,
        dataset_name=snakemake.params.dataset,
        valid_fraction=snakemake.params.valid_fraction,
        split_seed=snakemake.params.split_seed,
        truth_files=snakemake.params.truth,
    )
