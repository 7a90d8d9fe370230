from pathlib import Path

from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    import torch

    from lfads.search.pbt import PBTSettings
    from lfads.training.population import train_population

    torch.set_num_threads(snakemake.threads)
    train_population(
        PBTSettings.from_config(snakemake.params.settings),
        snakemake.params.base_hparams,
        [Path(snakemake.input.data)],
        {worker: Path(folder) for worker, folder in snakemake.params.runs.items()},
        Path(snakemake.params.checkpoint_dir),
        Path(snakemake.output.curves).parent,  # the plans and results go beside the curves
        Path(snakemake.output.history),
        Path(snakemake.output.curves),
        device="auto",
        rnn_impl=snakemake.config["model"]["rnn_impl"],
    )
