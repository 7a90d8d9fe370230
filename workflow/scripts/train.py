from pathlib import Path

from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    import torch

    from lfads.model.hparams import HParams
    from lfads.training.train import train_model

    torch.set_num_threads(snakemake.threads)
    train_model(
        [Path(snakemake.input.data)],
        HParams.from_dict(snakemake.params.hparams),
        out_dir=Path(snakemake.output.model).parent,
        checkpoint_dir=Path(snakemake.params.checkpoint_dir),
        device="auto",
        # An execution option, read here rather than passed as a param: it changes no number,
        # so changing it in the configfile must not rerun the job.
        rnn_impl=snakemake.config["model"]["rnn_impl"],
    )
