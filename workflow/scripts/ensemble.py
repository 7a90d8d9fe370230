from pathlib import Path

from lfads.evaluation.ensemble import write_ensemble
from lfads.formats.runs import RunFiles, run_files
from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    runs = run_files(
        snakemake.params.runs,
        curves=snakemake.input.curves,
        inferred=snakemake.input.inferred,
        model=snakemake.input.models,
    )
    out = RunFiles(
        inferred=Path(snakemake.output.inferred),
        curves=Path(snakemake.output.curves),
        members=Path(snakemake.output.members),
    )
    write_ensemble(
        snakemake.input.prepared, runs, snakemake.params.top_k, out, snakemake.params.name
    )
