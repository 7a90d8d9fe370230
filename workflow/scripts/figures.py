from pathlib import Path

from lfads.evaluation.figures import all_figures
from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    runs = snakemake.params.runs
    all_figures(
        Path(snakemake.input.summary),
        dict(zip(runs, map(Path, snakemake.input.inferred), strict=True)),
        dict(zip(runs, map(Path, snakemake.input.curves), strict=True)),
        Path(snakemake.input.prepared),
        Path(snakemake.input.targets[0]) if snakemake.input.targets else None,
        snakemake.params.group,
        {name: Path(path) for name, path in snakemake.output.items()},
        Path(snakemake.input.references),
    )
