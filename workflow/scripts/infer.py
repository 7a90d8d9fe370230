from pathlib import Path

from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    import torch

    from lfads.evaluation.infer import posterior_sample

    torch.set_num_threads(snakemake.threads)
    posterior_sample(
        Path(snakemake.input.model),
        [Path(snakemake.input.data)],
        [Path(snakemake.output[0])],
        n_samples=snakemake.params.n_samples,
        device="auto",
        rnn_impl=snakemake.config["model"]["rnn_impl"],  # (as in train.py: changes no number)
    )
