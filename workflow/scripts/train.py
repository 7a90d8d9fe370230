from pathlib import Path

from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    import torch

    from lfads.model.hparams import HParams
    from lfads.training.train import Member, train_pack

    torch.set_num_threads(snakemake.threads)
    pack = Path(snakemake.output[0])
    train_pack(
        [
            Member(run, HParams.from_dict(hparams), pack / run)
            for run, hparams in snakemake.params.members.items()
        ],
        [Path(snakemake.input.data)],
        Path(snakemake.params.checkpoint_dir),
        device="auto",
        # An execution option, read here rather than passed as a param: it changes no number,
        # so changing it in the configfile must not rerun the job.
        rnn_impl=snakemake.config["model"]["rnn_impl"],
    )
