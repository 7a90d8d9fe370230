from lfads.evaluation.submission import submitted_run, write_submission
from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    members = dict(zip(snakemake.params.ensembles, snakemake.input.members, strict=True))
    inferred = dict(zip(snakemake.params.rows, snakemake.input.inferred, strict=True))
    run = submitted_run(snakemake.input.summary, members)
    write_submission(snakemake.input.prepared, inferred[run], snakemake.output[0])
