from pathlib import Path

from lfads.infra.logs import log_to_file

with log_to_file(snakemake.log[0]):
    import torch

    from lfads.model.hparams import HParams
    from lfads.search.pbt import read_plan, worker_hparams
    from lfads.training.pbt_worker import train_worker

    torch.set_num_threads(snakemake.threads)
    worker = snakemake.wildcards.worker
    start_state = snakemake.input.get("start_state")
    plan = read_plan(snakemake.input.plan)
    searched = plan.worker(worker).hyperparameters
    train_worker(
        worker,
        [Path(snakemake.input.data)],
        HParams.from_dict(worker_hparams(snakemake.params.base_hparams, searched, plan.end_epoch)),
        searched,
        Path(start_state) if start_state else None,
        out_dir=Path(snakemake.output.result).parent,
        checkpoint_dir=Path(snakemake.params.checkpoint_dir),
        device="auto",
        rnn_impl=snakemake.config["model"]["rnn_impl"],
    )
