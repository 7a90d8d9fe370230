from lfads.data.fetch import materialise
from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    materialise(
        snakemake.params.source,
        snakemake.params.data_dir,
        snakemake.output[0],
        # Read here rather than passed as a param: where the files come from changes none of their
        # bytes, so changing it must not rerun fetch and every job after it.
        instance_url=snakemake.config["source"].get("dandi", {}).get("instance_url"),
    )
