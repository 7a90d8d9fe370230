from pathlib import Path

from lfads.evaluation.aggregate import write_summary
from lfads.evaluation.references import write_references
from lfads.evaluation.report_table import write_summary_html
from lfads.formats.runs import run_files
from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    files = run_files(
        snakemake.params.runs,
        metrics=snakemake.input.metrics,
        curves=snakemake.input.curves,
        hparams=dict(zip(snakemake.params.trained, snakemake.input.hparams, strict=True)),
    )
    write_summary(
        snakemake.params.runs,
        files,
        snakemake.output[0],
        snakemake.params.searched,
        snakemake.output.columns,
    )
    targets = Path(snakemake.input.targets[0]) if snakemake.input.targets else None
    write_references(Path(snakemake.input.prepared), targets, snakemake.output.references)
    write_summary_html(snakemake.output[0], snakemake.output.references, snakemake.output.html)
