import shutil

from lfads.infra.io import atomic_path
from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    for name in ("model", "metrics", "hparams"):
        with atomic_path(snakemake.output[name]) as tmp:
            shutil.copyfile(snakemake.input[name], tmp)
