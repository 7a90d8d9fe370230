import shutil
from pathlib import Path

from lfads.infra.io import atomic_path
from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    run = Path(snakemake.input[0]) / snakemake.params.member  # its folder in the pack's
    for path in snakemake.output:
        with atomic_path(path) as tmp:
            shutil.copyfile(run / Path(path).name, tmp)
