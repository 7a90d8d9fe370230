from lfads.evaluation.evaluate import evaluate_run
from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    evaluate_run(
        snakemake.input.prepared,
        snakemake.input.inferred,
        snakemake.input.targets[0] if snakemake.input.targets else None,
        snakemake.output[0],
    )
